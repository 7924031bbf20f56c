"""nucseg.io.masks.read_labels: instance label PNG / TIFF in, 2-D uint32 out; colour and broken files refused."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucseg.errors import InvalidInputError, SlideReadError, UnsupportedFileError
from nucseg.io.masks import as_label_image, read_labels
from nucseg.io.sample import sample_info, sample_paths


def instances() -> np.ndarray:
    labels = np.zeros((40, 50), np.uint16)
    labels[2:10, 3:12] = 7
    labels[20:30, 20:35] = 300  # ids are kept, not renumbered
    labels[31:38, 40:48] = 2
    return labels


def test_uint16_png_keeps_ids(tmp_path):
    Image.fromarray(instances()).save(tmp_path / "l.png")
    out = read_labels(tmp_path / "l.png")
    assert out.dtype == np.uint32 and out.shape == (40, 50)
    np.testing.assert_array_equal(out, instances())


def test_tiff_and_ome_pyramid_level0(tmp_path):
    labels = instances().astype(np.uint32) * 1000
    tifffile.imwrite(tmp_path / "l.tif", labels)
    np.testing.assert_array_equal(read_labels(tmp_path / "l.tif"), labels)
    with tifffile.TiffWriter(tmp_path / "l.ome.tif", ome=True) as tif:
        tif.write(labels, subifds=1, tile=(16, 16), compression="zlib", metadata={"axes": "YX"})
        tif.write(np.ascontiguousarray(labels[::2, ::2]), subfiletype=1, tile=(16, 16), compression="zlib")
    np.testing.assert_array_equal(read_labels(tmp_path / "l.ome.tif"), labels)


def test_binary_masks_become_connected_components(tmp_path):
    mask = (instances() > 0).astype(np.uint8) * 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = read_labels(tmp_path / "m.png")
    assert out.dtype == np.uint32 and out.max() == 3 and len(np.unique(out)) == 4
    np.testing.assert_array_equal(out > 0, mask > 0)
    tifffile.imwrite(tmp_path / "b.tif", instances() > 0)
    assert read_labels(tmp_path / "b.tif").max() == 3


def test_rgb_label_images_are_refused_unless_grey(tmp_path):
    colour = np.zeros((20, 20, 3), np.uint8)
    colour[2:8, 2:8] = (255, 0, 0)
    colour[10:15, 10:15] = (0, 200, 30)
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(InvalidInputError, match="RGB") as err:
        read_labels(tmp_path / "c.png")
    assert "single-channel" in str(err.value) and "\n" not in str(err.value)
    grey = np.repeat(instances()[..., None].astype(np.uint8), 3, axis=2)
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "g.png"), instances().astype(np.uint8))


def test_invalid_values():
    with pytest.raises(InvalidInputError, match="fractional"):
        as_label_image(np.full((4, 4), 0.5, np.float32))
    with pytest.raises(InvalidInputError, match="negative"):
        as_label_image(np.full((4, 4), -1, np.int16))
    with pytest.raises(InvalidInputError, match="2-D"):
        as_label_image(np.zeros((2, 6, 6), np.uint16))
    np.testing.assert_array_equal(as_label_image(np.full((1, 4, 4), 3.0)), np.full((4, 4), 3, np.uint32))


def test_broken_label_files(tmp_path):
    Image.fromarray(instances()).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "e.tif").write_bytes(b"")
    (tmp_path / "x.tif").write_text("no tiff")
    for name in ("t.png", "e.tif", "x.tif", "missing.png"):
        with pytest.raises(SlideReadError) as err:
            read_labels(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "l.jpg").write_bytes(b"x")
    with pytest.raises(UnsupportedFileError):
        read_labels(tmp_path / "l.jpg")


def test_sample_labels():
    image_path, labels_path = sample_paths()
    labels = read_labels(labels_path)
    assert labels.shape == (512, 512) and labels.dtype == np.uint32
    info = sample_info()
    assert labels.max() == info["nuclei"] == len(np.unique(labels)) - 1  # 1..N, consecutive
    assert info["box"] == [296, 480, 808, 992] and info["mpp"] == 0.25
    assert info["source_tile"] == "TCGA-E2-A14V-01Z-00-DX1"
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    assert areas.min() >= 10
    assert image_path.name == "he_breast_monuseg.png" and image_path.is_file()


@pytest.mark.shared_data
def test_sample_is_the_stated_crop(shared_data):
    from nucseg.io.slides import read_image

    info = sample_info()
    y0, x0, y1, x1 = info["box"]
    source = read_image(shared_data / "monuseg-train" / "images" / f"{info['source_tile']}.png")
    np.testing.assert_array_equal(read_image(sample_paths()[0]), source[y0:y1, x0:x1])
    truth = read_labels(shared_data / "monuseg-train" / "labels" / f"{info['source_tile']}.png")[y0:y1, x0:x1]
    np.testing.assert_array_equal(read_labels(sample_paths()[1]) > 0, np.isin(truth, _big_ids(truth)))


def _big_ids(labels: np.ndarray, min_area: int = 10) -> np.ndarray:
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    return ids[areas >= min_area]
