"""A viewer session on a machine without an accelerator never imports torch, segmentation-models-pytorch nor Triton:
every dock open, the default model's first ONNX Runtime export, a segmentation and the Fine-tune dock's timed
training step. Their 380 k objects would be walked by every later full garbage collection on the GUI thread
(napari forces one whenever a layer is removed): a session with the model docks held 795 k objects and its
collections took 315-321 ms, against 390 k and 150-195 ms without them (docs/VIEWER.md). Torch runs in
processes of their own (`nucseg.models.build.export_in_child`, `nucseg.jobs.apart`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gui

SESSION = r'''
import json, sys, time
from qtpy.QtCore import QEventLoop, QTimer
from qtpy.QtWidgets import QApplication

def pump(until, timeout):
    loop, start = QEventLoop(), time.perf_counter()
    def check():
        if until() or time.perf_counter() - start > timeout:
            loop.quit()
        else:
            QTimer.singleShot(20, check)
    QTimer.singleShot(0, check)
    loop.exec()

def main():
    import napari
    from nucseg._napari import result_layers
    from nucseg.io.sample import sample_paths
    QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    docks = {}
    def open_docks():  # from the event loop, as the Plugins menu does
        viewer.open(str(sample_paths()[0]), plugin="napari-nucseg")
        for name in ("Segment nuclei", "Evaluate (TP / FP / FN)", "Corrections", "Fine-tune", "Classify nuclei",
                     "Measurements"):
            docks[name] = viewer.window.add_plugin_dock_widget("napari-nucseg", name)[1]
    QTimer.singleShot(0, open_docks)
    pump(lambda: len(docks) == 6 and len(viewer.layers) > 0, 120)
    segment, finetune = docks["Segment nuclei"], docks["Fine-tune"]
    pump(lambda: segment.ready and not result_layers._preloading, 600)
    finetune.update_estimate()  # a tabbed dock that was never shown has not timed its step yet
    QTimer.singleShot(0, segment.run_button.click)
    pump(lambda: segment.running, 30)
    pump(lambda: not segment.running and bool(finetune.estimates), 600)
    pump(lambda: False, 1)
    print(json.dumps({"layers": [layer.name for layer in viewer.layers], "estimated": bool(finetune.estimates),
                      "torch": "torch" in sys.modules, "smp": "segmentation_models_pytorch" in sys.modules,
                      "triton": "triton" in sys.modules}))
    viewer.close()

if __name__ == "__main__":
    main()
'''


def test_a_viewer_session_on_the_cpu_never_imports_torch(tmp_path):
    from nucseg.models.device import accelerator_possible

    if accelerator_possible():
        pytest.skip("an accelerator may be here: the viewer imports torch to use it")
    script = tmp_path / "session.py"
    script.write_text(SESSION)
    env = {**os.environ, "NUCSEG_CACHE": str(tmp_path / "cache"), "NUCSEG_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert any("nuclei" in name for name in seen["layers"]), seen  # the segmentation ran
    assert seen["estimated"], seen
    assert list((tmp_path / "cache").rglob("export.json")), "the default model was exported (in its own process)"
    assert not seen["torch"] and not seen["smp"], seen
    assert not seen["triton"], seen  # loaded (deep-bound, see _native) only when torch is imported here
