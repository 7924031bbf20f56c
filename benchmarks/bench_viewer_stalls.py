"""The longest stall of napari's GUI thread (gap between 10 ms timer ticks) while a user opens a slide, a DICOM
folder, turns side by side on and off (also after the Segment and Fine-tune docks did their start-up work:
``side_by_side_after_docks``), exports a whole-slide GeoJSON / CSV and gets result layers; and the seconds from Run
to the first tile on the first run (the model loaded when the Segment dock opened, or not).

    xvfb-run -a -s "-screen 0 1920x1200x24" python benchmarks/bench_viewer_stalls.py [--gc] [SCENARIO ...]

Each action runs in a Python process of its own (one viewer, as a user's session has), one after the other.
With ``--gc`` every stall over 80 ms is printed with the full (generation-2) garbage collections that ran
inside it, their thread and duration (`gc.callbacks`): the figures of docs/VIEWER.md's "what is left".

Everything is triggered from inside the event loop, as a click or a menu is (a QTimer), in a real window
(1600 x 1000). Figures only (no assertion): docs/VIEWER.md has the before / after table.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLIDES = ROOT.parent / "shared" / "data" / "slides"
SLIDE = SLIDES / "small_HE.svs"
DICOM = SLIDES / "formats" / "dicom_cmu1_small_region"
sys.path.insert(0, str(ROOT / "tests"))

from gap_meter import GapMeter  # noqa: E402  (the tests' meter: one definition of a stall)


def pump(seconds: float = 0.0, until=None, timeout: float = 300.0) -> None:
    """Run the event loop (a nested loop: what a click runs in) for `seconds`, or until `until()` is true."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    start = time.perf_counter()

    def check() -> None:
        done = until() if until is not None else time.perf_counter() - start >= seconds
        if done or time.perf_counter() - start > timeout:
            loop.quit()
        else:
            QTimer.singleShot(10, check)

    QTimer.singleShot(0, check)
    loop.exec()


#: (end time, ms, thread name) of each generation-2 collection, kept with ``--gc``
COLLECTIONS: list[tuple[float, float, str]] = []


def watch_collections() -> None:
    import gc
    import threading

    started: dict[int, float] = {}

    def callback(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        now, thread = time.perf_counter(), threading.get_ident()
        if phase == "start":
            started[thread] = now
        elif thread in started:
            COLLECTIONS.append((now, (now - started.pop(thread)) * 1000, threading.current_thread().name))

    gc.callbacks.append(callback)


def report_collections(meter: GapMeter) -> None:
    """With ``--gc``: each stall over 80 ms and the full collections that ended inside it."""
    if "--gc" not in sys.argv[1:]:
        return
    for end, gap in meter.gaps:
        if gap > 0.08:
            inside = [f"{ms:.0f} ms on {name}" for t, ms, name in COLLECTIONS if end - gap <= t <= end]
            print(f"    stall {gap * 1000:.0f} ms; full collections inside: {inside or 'none'}", flush=True)


#: objects the garbage collector tracked when the last measurement started: a full collection walks them all
HEAP: list[int] = [0]


def note_heap() -> None:
    import gc

    HEAP[0] = len(gc.get_objects())


def measure(action, until, settle: float = 1.0) -> float:
    """The longest stall from `action` (called in the event loop) until `until()` and `settle` s of drawing."""
    from qtpy.QtCore import QTimer

    note_heap()
    meter = GapMeter()
    meter.start()
    QTimer.singleShot(20, action)
    pump(until=until)
    pump(settle)
    meter.stop()
    report_collections(meter)
    return meter.longest_ms()


def new_viewer():
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    pump(1.0)
    return viewer


def scenario_open(path: Path) -> float:
    viewer = new_viewer()
    n = len(viewer.layers)
    stall = measure(lambda: viewer.open(str(path), plugin="napari-nucseg"), lambda: len(viewer.layers) > n)
    viewer.close()
    return stall


def nuclei_like(shape, n, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint32)
    for k, (y, x) in enumerate(zip(rng.integers(8, shape[0] - 8, n), rng.integers(8, shape[1] - 8, n)), start=1):
        labels[y - 4:y + 4, x - 5:x + 5] = k
    return labels


def open_in_loop(viewer, path: Path):
    """Open as File > Open does (from the event loop); the layer, once it is there."""
    from qtpy.QtCore import QTimer

    n = len(viewer.layers)
    QTimer.singleShot(0, lambda: viewer.open(str(path), plugin="napari-nucseg"))
    pump(until=lambda: len(viewer.layers) > n)
    pump(0.5)
    return viewer.layers[n]


def slide_with_labels(viewer):
    image = open_in_loop(viewer, SLIDE)
    shape = (image.data[0] if image.multiscale else image.data).shape[:2]
    labels = nuclei_like(shape, 4000)
    pred = viewer.add_labels(labels, name=f"{image.name} nuclei", scale=image.scale, units=image.units,
                             metadata={"mpp": image.metadata["mpp"]})
    truth = viewer.add_labels(np.roll(labels, 3, axis=1), name="truth", scale=image.scale, units=image.units)
    pump(1.0)
    return image, pred, truth


def open_model_docks(viewer) -> None:
    """Open the Segment and Fine-tune docks as a user does (Plugins menu, fresh model cache) and wait for what they
    start: the default model's preload (its first ONNX Runtime export) and the timing of a training step."""
    from qtpy.QtCore import QTimer

    from nucseg._napari import result_layers

    os.environ["NUCSEG_CACHE"] = tempfile.mkdtemp()
    os.environ["NUCSEG_HOME"] = tempfile.mkdtemp()
    docks = []
    QTimer.singleShot(0, lambda: docks.extend(viewer.window.add_plugin_dock_widget("napari-nucseg", name)[1]
                                              for name in ("Segment nuclei", "Fine-tune")))
    pump(until=lambda: len(docks) == 2)
    segment, finetune = docks
    finetune.update_estimate()  # tabbed, it may not have been shown
    pump(until=lambda: segment.ready and not result_layers._preloading and bool(finetune.estimates), timeout=600)
    pump(1.0)


def scenario_side_by_side(after_docks: bool = False) -> tuple[float, float]:
    """Side by side on and off; `after_docks`: in a viewer where the Segment and Fine-tune docks did their
    start-up work first (`open_model_docks`), as in a user's session."""
    from nucseg._napari.evaluate_widget import EvaluateWidget

    viewer = new_viewer()
    if after_docks:
        open_model_docks(viewer)
    image, pred, truth = slide_with_labels(viewer)
    widget = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.truth_combo.set_layer(truth)
    widget.pred_combo.set_layer(pred)
    widget.image_combo.set_layer(image)
    widget.evaluate()
    pump(until=lambda: widget.evaluation is not None and widget._worker is None)
    pump(1.0)
    on = measure(lambda: widget.side_button.setChecked(True), lambda: widget.side_by_side.enabled and not
                 getattr(widget.side_by_side, "busy", False))
    off = measure(lambda: widget.side_button.setChecked(False), lambda: not widget.side_by_side.enabled and not
                  getattr(widget.side_by_side, "busy", False))
    viewer.close()
    return on, off


def scenario_export(suffix: str) -> float:
    viewer = new_viewer()
    image, pred, _ = slide_with_labels(viewer)
    out = Path(tempfile.mkdtemp()) / f"slide{suffix}"
    stall = measure(lambda: pred.save(str(out)), lambda: out.exists())
    viewer.close()
    return stall


def scenario_result_layers() -> float:
    """A 1024 x 1024 tile segmented by a fake network: the longest stall once the result is ready. The network is
    numpy's, so that torch is not in the process, as it is not in a user's viewer on the CPU (ONNX Runtime)."""
    from fake_inputs import NumpyBlobNet, blob_image, fake_model_folder
    from nucseg._napari.segment_widget import SegmentWidget
    from nucseg.models import build

    home = Path(tempfile.mkdtemp())
    os.environ["NUCSEG_HOME"] = str(home)
    model = fake_model_folder(home)
    net = NumpyBlobNet()
    build.load_network = lambda spec, device="cpu", runtime="auto": net
    viewer = new_viewer()
    tile, _ = blob_image((256, 256), n=20, seed=3)
    viewer.add_image(np.tile(tile, (4, 4, 1)), name="large", rgb=True)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_combo.set_model(model)
    pump(until=lambda: widget.ready)
    pump(1.0)
    returned = []  # when the worker handed its result over: every step after it counts
    from qtpy.QtCore import QTimer

    def click() -> None:
        widget.run_button.click()
        widget._worker.returned.connect(lambda _: returned.append(time.perf_counter()))

    note_heap()
    meter = GapMeter()
    meter.start()
    QTimer.singleShot(20, click)
    pump(until=lambda: not widget.running and returned)
    pump(1.5)
    meter.stop()
    report_collections(meter)
    viewer.close()
    return meter.longest_ms(start=returned[0])


def scenario_first_run(wait_s: float = 60.0) -> tuple[float, float]:
    """The real default model, a fresh export cache: open the Segment dock, wait `wait_s` (a user choosing the
    settings), click Run on a field of view: seconds to the first tile done, and the longest stall meanwhile."""
    os.environ["NUCSEG_CACHE"] = tempfile.mkdtemp()
    os.environ["NUCSEG_HOME"] = tempfile.mkdtemp()
    viewer = new_viewer()
    open_in_loop(viewer, SLIDE)
    viewer.scene.camera.zoom *= 8
    from qtpy.QtCore import QTimer

    opened = []  # from the event loop, as the Plugins menu opens it
    QTimer.singleShot(0, lambda: opened.append(viewer.window.add_plugin_dock_widget("napari-nucseg",
                                                                                      "Segment nuclei")[1]))
    pump(until=lambda: bool(opened))
    widget = opened[0]
    widget.region_combo.setCurrentText("current field of view")
    pump(wait_s)
    texts = []
    t0 = []

    def click():
        t0.append(time.perf_counter())
        widget.run_button.click()

    note_heap()
    meter = GapMeter()
    meter.start()
    QTimer.singleShot(20, click)
    pump(until=lambda: bool(t0) and (widget.controls.progress_bar.value() > 0 or not widget.running), timeout=600)
    first_tile = time.perf_counter() - t0[0]
    texts.append(widget.controls.status.text())
    meter.stop()
    widget.stop()
    pump(until=lambda: not widget.running, timeout=600)
    viewer.close()
    return first_tile, meter.longest_ms()


DEFAULT = ["open_svs", "open_dicom", "side_by_side", "side_by_side_after_docks", "geojson", "csv",
           "result_layers"]


def main() -> None:
    chosen = [a for a in sys.argv[1:] if a != "--gc"] or DEFAULT
    if len(chosen) > 1:
        # each action in a process of its own, as a user's session has one viewer: closed viewers' objects stay in
        # the heap a while, and every full collection walks them (476 k objects by the third action in one process)
        import subprocess

        flags = [a for a in sys.argv[1:] if a == "--gc"]
        for name in chosen:
            subprocess.run([sys.executable, __file__, name, *flags], check=False)
        return
    import napari  # noqa: F401
    from qtpy.QtWidgets import QApplication

    QApplication.instance() or QApplication([])
    if "--gc" in sys.argv[1:]:
        watch_collections()
    for name in chosen:
        t = time.perf_counter()
        if name == "open_svs":
            print(f"open small_HE.svs: longest stall {scenario_open(SLIDE):.0f} ms", flush=True)
        elif name == "open_dicom":
            print(f"open the DICOM folder: longest stall {scenario_open(DICOM):.0f} ms", flush=True)
        elif name == "side_by_side":
            on, off = scenario_side_by_side()
            print(f"side by side on: {on:.0f} ms, off: {off:.0f} ms", flush=True)
        elif name == "side_by_side_after_docks":
            on, off = scenario_side_by_side(after_docks=True)
            print(f"side by side, Segment and Fine-tune docks opened first: on {on:.0f} ms, off {off:.0f} ms",
                  flush=True)
        elif name in ("geojson", "csv"):
            print(f"save whole-slide {name} (4000 nuclei): longest stall {scenario_export('.' + name):.0f} ms",
                  flush=True)
        elif name == "result_layers":
            print(f"adding result layers (1024 x 1024): longest stall {scenario_result_layers():.0f} ms", flush=True)
        elif name == "first_run":
            first, stall = scenario_first_run()
            print(f"first run, Run -> first tile: {first:.1f} s (longest stall {stall:.0f} ms)", flush=True)
        print(f"  ({time.perf_counter() - t:.0f} s; {HEAP[0] / 1000:.0f} k objects tracked by the garbage collector, "
              f"torch {'imported' if 'torch' in sys.modules else 'not imported'})", flush=True)
    from napari.qt.threading import WorkerBase

    WorkerBase.await_workers(60_000)  # as napari does on quit: a measuring worker outliving its viewer


if __name__ == "__main__":
    main()
