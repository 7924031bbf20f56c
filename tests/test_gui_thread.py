"""What the GUI starts (inside its event loop: a menu, a click, the save dialog) runs off its thread: opening a
slide, saving, side by side step by step, loading the model when the Segment dock opens. Called from a script or
a test outside the event loop, the same calls finish before they return (as napari's API promises).

The stall figures of these paths are benchmarks/bench_viewer_stalls.py's (docs/VIEWER.md), not assertions here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import QTimer
from test_widget_segment import MODEL_NAME, nucseg_home  # noqa: F401  (fixture)

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT.parent / "shared" / "data" / "slides" / "small_HE.svs"
BROKEN = ROOT.parent / "shared" / "data" / "slides" / "broken" / "unreadable.svs"


def from_the_event_loop(qtbot, action, until, timeout=120000):
    """Call `action` from inside the event loop (as a click does); wait until `until()`; its return value."""
    out = []
    QTimer.singleShot(0, lambda: out.append(action()))
    qtbot.waitUntil(lambda: bool(out) and until(), timeout=timeout)
    return out[0]


@pytest.mark.shared_data
@pytest.mark.skipif(not SLIDE.is_file(), reason="needs ../shared/data/slides/small_HE.svs")
def test_a_slide_opened_from_the_gui_is_read_in_a_worker(make_napari_viewer, qtbot, monkeypatch):
    from nucseg._napari import reader

    viewer = make_napari_viewer()
    threads = []
    read = reader.read_layers
    monkeypatch.setattr(reader, "read_layers", lambda *a, **k: (threads.append(__import__("threading")
                                                                                .current_thread().name),
                                                                 read(*a, **k))[1])
    returned = from_the_event_loop(qtbot, lambda: viewer.open(str(SLIDE), plugin="napari-nucseg"),
                                   lambda: len(viewer.layers) == 1)
    assert returned == [] and threads and threads[0] != "MainThread"  # napari told "nothing yet"; read elsewhere
    layer = viewer.layers[0]
    synchronous = reader.read_layers(str(SLIDE))[0]  # what a script gets
    assert layer.name == synchronous[1]["name"] and layer.metadata["mpp"] == synchronous[1]["metadata"]["mpp"]
    assert tuple(layer.scale) == tuple(synchronous[1]["scale"]) and layer.multiscale
    assert isinstance(layer.data[-1], np.ndarray)  # the overview read in the worker, not at the first draw
    assert np.array_equal(layer.data[-1][:50, :50], np.asarray(synchronous[0][-1][:50, :50]))


@pytest.mark.shared_data
@pytest.mark.skipif(not BROKEN.is_file(), reason="needs ../shared/data/slides/broken")
def test_a_broken_file_opened_from_the_gui_is_one_line_and_the_viewer_goes_on(make_napari_viewer, qtbot,
                                                                              monkeypatch):
    from nucseg._napari import _workers

    errors: list[str] = []
    monkeypatch.setattr(_workers, "show_error", errors.append)
    viewer = make_napari_viewer()
    from_the_event_loop(qtbot, lambda: viewer.open(str(BROKEN), plugin="napari-nucseg"), lambda: bool(errors))
    assert len(errors) == 1 and "\n" not in errors[0] and "unreadable.svs" in errors[0]
    assert len(viewer.layers) == 0


def nuclei(shape=(300, 400), n=60):
    rng = np.random.default_rng(0)
    labels = np.zeros(shape, np.uint32)
    for k, (y, x) in enumerate(zip(rng.integers(6, shape[0] - 6, n), rng.integers(6, shape[1] - 6, n)), start=1):
        labels[y - 3:y + 3, x - 4:x + 4] = k
    return labels


def test_saving_from_the_gui_writes_in_a_worker_what_the_layer_held(make_napari_viewer, qtbot, tmp_path):
    import nucseg._napari  # noqa: F401

    viewer = make_napari_viewer()
    rgb = np.random.default_rng(1).integers(60, 230, (300, 400, 3), np.uint8)
    viewer.add_image(rgb, name="he", rgb=True)  # under the labels: the stain columns are measured from it
    labels = viewer.add_labels(nuclei(), name="n", metadata={"mpp": 0.5})
    expected = np.unique(labels.data[labels.data > 0]).tolist()
    target = tmp_path / "n.geojson"

    def save_then_paint():
        written = labels.save(str(target))
        labels.data[:] = 0  # the user paints right after: the file keeps what was saved
        return written

    written = from_the_event_loop(qtbot, save_then_paint, target.exists)
    assert written == [str(target)]
    features = json.loads(target.read_text())["features"]
    assert sorted(f["properties"]["nucseg_id"] for f in features) == expected
    for name in ("n.ome.tif", "n.zarr", "n.csv"):  # every format takes the same path
        path = tmp_path / name
        labels.data = nuclei()
        from_the_event_loop(qtbot, lambda p=path: labels.save(str(p)), path.exists)
    assert labels.save(str(tmp_path / "sync.csv")) == [str(tmp_path / "sync.csv")]  # a script: done on return
    # the GUI's save (another process, `nucseg.io.export_process`) writes what a script's does, stains included
    assert (tmp_path / "sync.csv").read_text() == (tmp_path / "n.csv").read_text()
    assert "mean_hematoxylin_od" in (tmp_path / "n.csv").read_text().splitlines()[0]
    labels.save(str(tmp_path / "sync.geojson"))
    from_the_event_loop(qtbot, lambda: labels.save(str(tmp_path / "gui.geojson")), (tmp_path / "gui.geojson").exists)

    def without_ids(name):  # QuPath feature ids are fresh UUIDs on every write
        collection = json.loads((tmp_path / name).read_text())
        return [{k: v for k, v in f.items() if k != "id"} for f in collection["features"]], collection["nucseg"]

    assert without_ids("sync.geojson") == without_ids("gui.geojson")


def test_a_save_that_fails_in_the_export_process_says_why_in_one_line(make_napari_viewer, qtbot, tmp_path,
                                                                     monkeypatch):
    from nucseg._napari import _workers, writers

    shown = []
    monkeypatch.setattr(_workers, "show_error", shown.append)
    viewer = make_napari_viewer()
    labels = viewer.add_labels(nuclei(), name="n")
    blocker = tmp_path / "not a folder"
    blocker.write_text("a file where the folder should be")
    from_the_event_loop(qtbot, lambda: labels.save(str(blocker / "n.geojson")), lambda: not writers._exports)
    qtbot.waitUntil(lambda: bool(shown), timeout=30000)
    assert "not a folder" in shown[0] and "check that" in shown[0] and "\n" not in shown[0]  # the path, the fix
    assert viewer.layers[0] is labels  # the viewer goes on


def test_where_no_export_process_can_start_the_save_is_written_in_the_viewer(make_napari_viewer, qtbot, tmp_path,
                                                                           monkeypatch):
    from nucseg._napari import writers
    from nucseg.io import export_process

    def no_process():
        raise OSError("spawning is not allowed here")

    monkeypatch.setattr(export_process, "_works", None)
    monkeypatch.setattr(export_process, "_pool", no_process)
    viewer = make_napari_viewer()
    labels = viewer.add_labels(nuclei(), name="n")
    target = tmp_path / "n.csv"
    from_the_event_loop(qtbot, lambda: labels.save(str(target)), lambda: target.exists() and not writers._exports)
    assert len(target.read_text().splitlines()) == 1 + len(np.unique(labels.data)) - 1
    assert export_process._works is False and not export_process.fits(labels.data)  # not tried again


def test_a_save_from_the_gui_shortens_the_switch_interval_while_it_traces(make_napari_viewer, qtbot, tmp_path,
                                                                           monkeypatch):
    """A label map too large for the export process is written in the viewer's process: a worker tracing nuclei
    in Python holds the GIL for the whole switch interval each time the GUI thread wants it back (hundreds of
    times a frame), so it runs at 1 ms and gives the interpreter its own interval back when done."""
    import sys

    from nucseg._napari import _loop, writers
    from nucseg.io import export, export_process

    monkeypatch.setattr(export_process, "MAX_PIXELS", 0)

    viewer = make_napari_viewer()
    labels = viewer.add_labels(nuclei(), name="n", metadata={"mpp": 0.5})
    seen = []
    write = export.write_geojson
    monkeypatch.setattr(export, "write_geojson", lambda *a, **k: (seen.append(sys.getswitchinterval()),
                                                                  write(*a, **k))[1])
    before = sys.getswitchinterval()
    target = tmp_path / "n.geojson"
    from_the_event_loop(qtbot, lambda: labels.save(str(target)), target.exists)
    qtbot.waitUntil(lambda: not writers._exports, timeout=30000)  # the export's worker has ended
    assert seen == [_loop.FAIR_SWITCH_S] and sys.getswitchinterval() == before


def test_side_by_side_from_the_gui_adds_its_layers_one_turn_at_a_time(make_napari_viewer, qtbot):
    from nucseg._napari.side_by_side import SideBySide

    viewer = make_napari_viewer()
    image = viewer.add_image(np.full((300, 400, 3), 200, np.uint8), rgb=True, name="image")
    truth = viewer.add_labels(nuclei(), name="truth")
    pred = viewer.add_labels(np.roll(nuclei(), 2, axis=1), name="pred")
    side = SideBySide(viewer)
    seen_busy = []
    from_the_event_loop(qtbot, lambda: (side.enable(image, truth, pred), seen_busy.append(side.busy)),
                        lambda: side.enabled and not side.busy)
    assert seen_busy == [True]  # returned before the layers were all added
    assert len(viewer.layers) == 3 + 2 and viewer.canvas.grid.enabled
    from_the_event_loop(qtbot, side.disable, lambda: not side.busy)
    assert len(viewer.layers) == 3 and not viewer.canvas.grid.enabled and all(layer.visible for layer in viewer.layers)
    side.enable(image, truth, pred)  # from a script: done on return
    assert len(viewer.layers) == 5 and not side.busy
    side.disable()
    assert len(viewer.layers) == 3


def test_steps_from_the_gui_leave_the_window_a_turn_between_them(qtbot):
    """Each step of a `StepQueue` waits for a timer of the window's (painting, a click) to fire: chained
    zero-delay calls are posted events, which Qt handles before timers, and joined into one long freeze."""
    import time

    from nucseg._napari._loop import StepQueue

    ticks = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(1))
    seen = []

    def step():
        seen.append(len(ticks))
        time.sleep(0.03)  # a layer added: its cost on the GUI thread

    queue = StepQueue()
    timer.start()
    from_the_event_loop(qtbot, lambda: queue.extend([step] * 5), lambda: not queue)
    timer.stop()
    assert len(seen) == 5 and all(b > a for a, b in zip(seen, seen[1:])), seen


def test_side_by_side_off_collects_garbage_once_not_per_layer(make_napari_viewer, qtbot, monkeypatch):
    """napari collects garbage after every layer removed (0.1-0.2 s on a busy heap); the copies go in one batch,
    so turning the view off pays that once."""
    import napari._vispy.canvas as vispy_canvas

    from nucseg._napari.side_by_side import SideBySide

    viewer = make_napari_viewer()
    image = viewer.add_image(np.full((300, 400, 3), 200, np.uint8), rgb=True, name="image")
    truth = viewer.add_labels(nuclei(), name="truth")
    pred = viewer.add_labels(np.roll(nuclei(), 2, axis=1), name="pred")
    side = SideBySide(viewer)
    from_the_event_loop(qtbot, lambda: side.enable(image, truth, pred), lambda: side.enabled and not side.busy)
    collected = []
    gc = vispy_canvas.gc
    monkeypatch.setattr(vispy_canvas, "gc", type("gc", (), {"collect": staticmethod(
        lambda *a: (collected.append(1), gc.collect(*a))[1])}))
    from_the_event_loop(qtbot, side.disable, lambda: not side.busy)
    assert len(viewer.layers) == 3 and all(layer.visible for layer in viewer.layers)
    assert len(collected) == 1


def test_side_by_side_from_the_gui_collects_garbage_in_a_turn_before_its_first_layer(make_napari_viewer, qtbot):
    """A full collection the interpreter starts by itself inside a layer step adds up with it (result layers 0.26-0.29 s, docs/VIEWER.md);
    one run first, as a turn of its own, makes room. A window's timer fires between the two."""
    import gc
    import time

    from nucseg._napari.side_by_side import SideBySide

    viewer = make_napari_viewer()
    image = viewer.add_image(np.full((300, 400, 3), 200, np.uint8), rgb=True, name="image")
    truth = viewer.add_labels(nuclei(), name="truth")
    pred = viewer.add_labels(np.roll(nuclei(), 2, axis=1), name="pred")
    side = SideBySide(viewer)
    events: list[tuple[str, float]] = []

    def on_collection(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            events.append(("collected", time.perf_counter()))

    ticks = QTimer()
    ticks.setInterval(5)
    ticks.timeout.connect(lambda: events.append(("tick", time.perf_counter())))
    viewer.layers.events.inserted.connect(lambda _: events.append(("layer", time.perf_counter())))
    gc.callbacks.append(on_collection)
    ticks.start()
    try:
        from_the_event_loop(qtbot, lambda: side.enable(image, truth, pred), lambda: side.enabled and not side.busy)
    finally:
        ticks.stop()
        gc.callbacks.remove(on_collection)
    kinds = [kind for kind, _ in events]
    first_layer = kinds.index("layer")
    assert "collected" in kinds[:first_layer], kinds
    assert "tick" in kinds[kinds.index("collected"):first_layer], kinds


def test_the_segment_dock_loads_the_model_when_it_opens_from_the_gui(make_napari_viewer, qtbot, monkeypatch):
    from fake_models import BlobNet
    from nucseg.models import build

    loaded = []
    net = BlobNet().eval()
    monkeypatch.setattr(build, "load_network", lambda spec, device="cpu", runtime="auto": (loaded.append(spec.name),
                                                                                           net)[1])
    viewer = make_napari_viewer()
    from_the_event_loop(qtbot, lambda: viewer.window.add_plugin_dock_widget("napari-nucseg", "Segment nuclei"),
                        lambda: bool(loaded))
    assert loaded[0]  # before any Run
    from nucseg._napari import result_layers
    from nucseg._napari.segment_widget import SegmentWidget

    # the dock's own preloads end first: one still running after `clear` is the suspected cause of a flake
    qtbot.waitUntil(lambda: not result_layers._preloading, timeout=60000)
    loaded.clear()
    SegmentWidget(viewer)  # from a script: nothing loaded behind its back
    qtbot.wait(300)
    assert loaded == []
