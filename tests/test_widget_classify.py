"""The Classify dock end to end on the real small_HE.svs: clicks (kept on disk, undo, reopened), train, apply to the
whole labelled area, the view and a drawn region, counts per mm², suggest next, save, export with classes.

The nuclei are a fixed haematoxylin threshold of a 1200 px region of the slide (cheap and deterministic; the
Segment dock's own tests cover segmentation; a region, as the Segment dock makes them, so offsets are exercised),
labelled 'lymphocyte' when small and 'tumour' when large, so the truth is known.
"""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _threshold_nuclei(rgb: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.morphology import remove_small_objects

    h = rgb2hed(rgb)[..., 0]
    mask = remove_small_objects(ndi.binary_opening(h > 0.06, iterations=1), max_size=12)
    labels, _ = ndi.label(mask)
    return labels.astype(np.uint32)


class Click:
    """A stand-in for napari's mouse event in a drag callback."""

    def __init__(self, position, kind="mouse_press"):
        self.position, self.type, self.button, self.modifiers = tuple(position), kind, 1, ()


def _wait(qtbot, widget, timeout=600000):  # a loaded shared machine is slow
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


@pytest.mark.gui
@pytest.mark.shared_data
def test_classify_dock_on_small_he(make_napari_viewer, qtbot, shared_data, home, tmp_path):
    from scipy import ndimage as ndi

    from nucseg._napari.classify_widget import CLASSES_LAYER, REGION_LAYER, ClassifyWidget

    viewer = make_napari_viewer(show=True)
    path = shared_data / "slides" / "small_HE.svs"
    [image] = viewer.open(str(path), plugin="napari-nucseg")
    # the nuclei of a region of the slide, as the Segment dock gives them (offset in nucseg_region)
    oy, ox, size = 600, 400, 1200
    nuclei = _threshold_nuclei(np.asarray(image.data[0][oy:oy + size, ox:ox + size]))
    labels = viewer.add_labels(nuclei, name="nuclei", scale=image.scale, opacity=0.4,
                               translate=np.asarray(image.translate) + np.array([oy, ox]) * image.scale,
                               metadata={"nucseg_image": {"name": image.name, "path": str(path)},
                                         "nucseg_region": (oy, ox, size, size)})
    ids = np.arange(1, int(nuclei.max()) + 1)
    area = ndi.sum(np.ones_like(nuclei), nuclei, ids)
    local = np.array(ndi.center_of_mass(np.ones_like(nuclei), nuclei, ids))
    on = np.floor(local + 0.5).astype(int)  # the pixel a click at the centre falls in
    centre_on = nuclei[on[:, 0], on[:, 1]] == ids
    centre = local + [oy, ox]  # full-resolution pixels of the slide
    small, large = np.percentile(area, 30), np.percentile(area, 75)
    widget = ClassifyWidget(viewer, choose_color=lambda c: (255, 0, 255))
    viewer.window.add_dock_widget(widget, name="Classify nuclei")
    assert widget.labels_combo.current_layer() is labels and widget.source.mpp == pytest.approx(0.499)
    names = [c.name for c in widget.classes.classes]
    assert names[:4] == ["tumour", "lymphocyte", "stroma", "other"]

    rng = np.random.default_rng(0)
    picks = {"lymphocyte": rng.choice(np.flatnonzero((area < small) & centre_on), 12, replace=False),
             "tumour": rng.choice(np.flatnonzero((area > large) & centre_on), 12, replace=False)}
    for klass, chosen in picks.items():
        viewer.layers.selection.active = labels
        widget.classes.select(names.index(klass))
        for k in chosen[:-1]:
            assert widget.label_at(centre[k, 1] + 0.5, centre[k, 0] + 0.5)
        # the last one by a mouse click on the canvas (press and release without a drag)
        k = chosen[-1]
        world = image.data_to_world((centre[k, 0], centre[k, 1]))
        event = Click(world)
        gen = widget._on_mouse(viewer, event)
        next(gen)
        event.type = "mouse_release"  # napari updates the one event object as the button goes up
        with pytest.raises(StopIteration):
            next(gen)
    assert not widget.label_at(1.0, 1.0)  # glass: no nucleus
    assert widget.store.counts() == {"lymphocyte": 12, "tumour": 12}
    saved = widget.store.path.read_text().splitlines()
    assert saved[0] == "image,x,y,class" and len(saved) == 25 and str(path) in saved[1]
    # relabel one nucleus: replaced, not doubled; undo brings the old class back
    k = picks["tumour"][0]
    widget.classes.select(names.index("stroma"))
    widget.label_at(centre[k, 1] + 0.5, centre[k, 0] + 0.5)
    assert widget.store.counts() == {"lymphocyte": 12, "tumour": 11, "stroma": 1}
    widget.undo()
    assert widget.store.counts() == {"lymphocyte": 12, "tumour": 12}

    widget.start_training()
    _wait(qtbot, widget)
    assert widget.trained is not None and widget.trained.classes == ["tumour", "lymphocyte"]

    widget.scope_combo.setCurrentIndex(2)  # whole slide
    widget.apply_button.click()
    _wait(qtbot, widget)
    result = widget.result
    assert len(result) == len(ids) and widget.slide_done
    truth = {int(i): "lymphocyte" if a < small else "tumour" if a > large else None for i, a in zip(ids, area)}
    sure = [(n, truth[int(i)]) for i, n in zip(result.ids, result.names) if truth[int(i)]]
    assert np.mean([a == b for a, b in sure]) > 0.85
    layer = viewer.layers[CLASSES_LAYER]
    assert len(layer.data) == len(ids)
    colours = {tuple(np.round(c[:3] * 255).astype(int)) for c in layer.face_color}
    assert colours == {(200, 30, 30), (40, 90, 230)}

    counts = widget.counts()
    slide_counts, slide_area = counts["slide"]
    assert sum(slide_counts.values()) == len(ids) and slide_area == nuclei.size
    assert "/mm²" in widget.table.item(0, 2).text()
    assert widget.ratio_text.text().startswith("lymphocytes per tumour cell:")

    # a drawn region: its counts are those of the nuclei whose centre lies inside
    viewer.add_shapes([[[700, 500], [700, 1300], [1700, 1300], [1700, 500]]], shape_type="polygon",
                      name=REGION_LAYER, scale=image.scale, face_color="transparent", edge_color="yellow",
                      edge_width=6)
    region_counts, region_area = widget.counts()["region"]
    inside = (result.y >= 700.5) & (result.y < 1700.5) & (result.x >= 500.5) & (result.x < 1300.5)
    assert sum(region_counts.values()) == pytest.approx(inside.sum(), abs=3)
    assert region_area == pytest.approx(1000 * 800, rel=0.01)

    # the view: zoom in and apply to it alone
    viewer.scene.camera.center = image.data_to_world((1200, 1000))
    viewer.scene.camera.zoom = 2.0 / 0.499
    widget.scope_combo.setCurrentIndex(0)
    widget.apply_button.click()
    _wait(qtbot, widget)
    assert len(widget.result) == len(ids)  # merged with the slide's
    view_counts, _ = widget.counts()["view"]
    assert 0 < sum(view_counts.values()) < len(ids)

    # suggest next: the view goes to an uncertain nucleus not yet labelled
    before = np.array(viewer.scene.camera.center)
    first = widget.suggest_next()
    assert first is not None and first not in [c.nucleus_id for c in widget.store.clicks]
    assert not np.allclose(before, viewer.scene.camera.center)
    viewer.window._qt_window.resize(1500, 860)
    viewer.scene.camera.center = image.data_to_world((1150, 1000))
    viewer.scene.camera.zoom = 1.4 / 0.499  # about 450 x 330 slide pixels on the canvas
    labels.visible = False  # the class markers on the H&E

    shot = tmp_path / "classify_small_HE.png"
    pixels = viewer.screenshot(str(shot), canvas_only=False)
    labels.visible = True
    assert pixels[..., :3].std() > 10
    if os.environ.get("NUCSEG_SCREENSHOTS"):
        shutil.copy(shot, ROOT / "docs" / "screenshots" / shot.name)

    folder = widget.save("slide-test")
    assert folder.name == "v001" and (folder / "examples.csv").exists()
    out = tmp_path / "export"
    out.mkdir()
    widget.export(out)
    _wait(qtbot, widget)
    with open(out / "small_HE_nuclei.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(ids) and {r["class"] for r in rows} == {"tumour", "lymphocyte"}
    x, y = float(rows[0]["centroid_x"]), float(rows[0]["centroid_y"])  # full-resolution slide pixels
    assert nuclei[int(y) - oy, int(x) - ox] == int(rows[0]["id"])
    features = json.loads((out / "small_HE_nuclei.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in features} == {"tumour", "lymphocyte"}
    summary = json.loads((out / "small_HE_classes.json").read_text())
    assert summary["counts"] == slide_counts and summary["per_mm2"]["tumour"] > 0

    # close and reopen: every label is still there
    widget.close()
    again = ClassifyWidget(viewer)
    assert again.store.counts() == {"lymphocyte": 12, "tumour": 12}
    assert sorted(c.nucleus_id for c in again.store.clicks) == sorted(
        int(i) + 1 for k in picks.values() for i in k)

