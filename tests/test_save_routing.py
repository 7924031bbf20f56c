"""File > Save Selected Layers with a typed extension reaches this plugin's writers (no filter to choose), and a
labels layer with a pixel size is never written without it (`nucseg._napari.save_routing`)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def nuclei():
    labels = np.zeros((60, 80), np.uint32)
    labels[10:20, 20:30] = 7
    labels[30:45, 50:70] = 9
    return labels


def save_from_dialog(viewer, monkeypatch, path):
    """Run napari's own Save Selected Layers dialog code, the user typing `path` and leaving the filter as it
    opened (the first one: "napari builtins labels" for a labels layer)."""
    from napari._qt import qt_viewer

    seen = {}

    def typed(parent, caption, directory, filter, options):  # noqa: A002 - Qt's name
        seen["filters"] = filter.split(";;")
        return str(path), seen["filters"][0]

    monkeypatch.setattr(qt_viewer.QFileDialog, "getSaveFileName", staticmethod(typed))
    viewer.window._qt_viewer._save_layers_dialog(selected=True)
    return seen["filters"]


def test_typed_extensions_reach_the_plugin_writers_from_the_save_dialog(make_napari_viewer, monkeypatch, tmp_path):
    import tifffile
    import zarr

    import nucseg._napari  # noqa: F401  (what napari imports with the plugin)

    viewer = make_napari_viewer()
    layer = viewer.add_labels(nuclei(), name="tile nuclei", scale=(0.5, 0.5), units=("micrometer", "micrometer"),
                              translate=(5.0, 10.0), metadata={"mpp": 0.5, "nucseg_region": (10, 20, 60, 80)})
    viewer.layers.selection = {layer}

    filters = save_from_dialog(viewer, monkeypatch, tmp_path / "n.geojson")
    assert filters[0].startswith("napari builtins labels")  # what the dialog opens on: not ours
    collection = json.loads((tmp_path / "n.geojson").read_text())
    assert sorted(f["properties"]["nucseg_id"] for f in collection["features"]) == [7, 9]
    assert collection["nucseg"]["mpp"] == 0.5

    save_from_dialog(viewer, monkeypatch, tmp_path / "n.csv")
    with open(tmp_path / "n.csv") as fh:
        rows = {int(r["id"]): r for r in csv.DictReader(fh)}
    assert float(rows[7]["area_um2"]) == pytest.approx(25.0) and float(rows[7]["centroid_x"]) == pytest.approx(45)

    save_from_dialog(viewer, monkeypatch, tmp_path / "n.zarr")
    group = zarr.open_group(str(tmp_path / "n.zarr"), mode="r")
    assert np.array_equal(group["0"][:], layer.data) and group.attrs["nucseg"]["mpp"] == 0.5

    for name in ("n.ome.tif", "plain.tif"):  # napari's TIFF writer would drop the size: ours writes it
        save_from_dialog(viewer, monkeypatch, tmp_path / name)
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert tif.is_ome and 'PhysicalSizeX="0.5"' in tif.ome_metadata
            assert np.array_equal(tif.asarray(), layer.data)


def test_a_sized_labels_layer_is_never_written_without_its_size(make_napari_viewer, monkeypatch, tmp_path):
    import tifffile

    import nucseg._napari  # noqa: F401

    viewer = make_napari_viewer()
    sized = viewer.add_labels(nuclei(), name="sized", metadata={"mpp": 0.25})
    with pytest.warns(UserWarning, match=r"drop the pixel size of 'sized' \(0.25 µm/px\)"):
        assert sized.save(str(tmp_path / "n.npz")) == []  # a format that cannot hold it: refused, says why
    assert not (tmp_path / "n.npz").exists()
    assert sized.save(str(tmp_path / "n.tif")) == [str(tmp_path / "n.tif")]
    with tifffile.TiffFile(tmp_path / "n.tif") as tif:
        assert 'PhysicalSizeX="0.25"' in tif.ome_metadata

    plain = viewer.add_labels(nuclei(), name="plain")  # no pixel size: napari's own writers as before
    assert plain.save(str(tmp_path / "p.npz")) == [str(tmp_path / "p.npz")]
    assert plain.save(str(tmp_path / "p.tif")) == [str(tmp_path / "p.tif")]
    with tifffile.TiffFile(tmp_path / "p.tif") as tif:
        assert not tif.is_ome
    assert sized.save(str(tmp_path / "x.npz"), plugin="napari") == [str(tmp_path / "x.npz")]  # asked for by name
