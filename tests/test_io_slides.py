"""nucseg.io.slides: real slides from ../shared/data, pyramids and tiles written here, and every broken file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucseg.errors import InvalidInputError, SlideReadError, UnsupportedFileError
from nucseg.io import slides
from nucseg.io.slides import is_supported, list_images, open_slide, read_image


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def assert_one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    text = str(err.value)
    assert "\n" not in text and str(path) in text and text.startswith("cannot read "), text


# --------------------------------------------------------------------------------------------- real slides


@pytest.mark.shared_data
def test_small_he_svs(shared_data):
    with open_slide(shared_data / "slides" / "small_HE.svs") as slide:
        assert slide.format == "aperio-svs"
        assert slide.shape == (2967, 2220)  # height x width; the SVS header says 2220x2967 (width x height)
        assert len(slide.levels) == 1 and not slide.is_pyramid and slide.downsamples == [1.0]
        assert slide.levels[0].shape == (2967, 2220, 3) and slide.levels[0].dtype == np.uint8
        assert type(slide.levels[0]).__module__.startswith("dask")  # lazy
        assert slide.mpp == pytest.approx(0.499) and slide.level_mpp(0) == pytest.approx(0.499)
        assert slide.metadata["objective_power"] == 20
        # thumbnail / label / macro are associated images, never levels
        assert set(slide.associated) == {"thumbnail", "label", "macro"}
        assert slide.associated["thumbnail"].shape == (768, 574, 3)
        assert slide.associated["label"].shape == (463, 387, 3)
        assert slide.associated["macro"].shape == (431, 1280, 3)
        assert np.asarray(slide.associated["macro"]).dtype == np.uint8
        region = slide.read_region(0, 1000, 800, 300, 200)
        assert region.shape == (300, 200, 3) and region.dtype == np.uint8
        np.testing.assert_array_equal(region, np.asarray(slide.levels[0][1000:1300, 800:1000]))
        assert region.std() > 10  # tissue, not a blank tile
        assert slide.best_level_for_mpp(0.5) == 0 and slide.best_level_for_mpp(2.0) == 0


@pytest.mark.shared_data
def test_he_example_ome_tiff(shared_data):
    with open_slide(shared_data / "slides" / "HE_example.ome.tif") as slide:
        assert slide.format == "ome-tiff"
        assert slide.shape == (1484, 1380)
        assert slide.mpp == pytest.approx(0.50008, abs=1e-4)  # OME PhysicalSizeX in µm
        whole = slide.read_region(0, 0, 0, *slide.shape)
        np.testing.assert_array_equal(whole, tifffile.imread(slide.path))


@pytest.mark.shared_data
def test_synthetic_boxes_pyramid(shared_data):
    path = shared_data / "slides" / "synthetic" / "boxes.tiff"
    with open_slide(path) as slide, tifffile.TiffFile(path) as tif:
        assert slide.format == "tiff-pyramid" and slide.is_pyramid
        assert [slide.level_shape(i) for i in range(4)] == [(250, 300), (125, 150), (62, 75), (31, 37)]
        assert slide.downsamples[:2] == [1.0, 2.0] and slide.downsamples[3] == pytest.approx(8.08, abs=0.01)
        assert slide.mpp is None  # 72 dpi: a screen resolution, not a microscope's
        for i in range(4):
            h, w = slide.level_shape(i)
            np.testing.assert_array_equal(slide.read_region(i, 0, 0, h, w), tif.pages[i].asarray())


@pytest.mark.shared_data
def test_synthetic_small_svs(shared_data):
    with open_slide(shared_data / "slides" / "synthetic" / "small.svs") as slide:
        assert slide.format == "aperio-svs" and slide.shape == (16, 16) and slide.mpp == pytest.approx(0.499)
        assert list(slide.associated) == ["thumbnail"]


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["unopenable.tiff", "unreadable.svs"])
def test_broken_shared_files(shared_data, name):
    path = shared_data / "slides" / "broken" / name
    with pytest.raises(SlideReadError) as err:
        open_slide(path)
    assert_one_line_naming(err, path)
    with pytest.raises(SlideReadError):
        read_image(path)


@pytest.mark.shared_data
def test_every_broken_shared_file_is_refused(shared_data):
    broken = sorted((shared_data / "slides" / "broken").iterdir())
    assert broken
    for path in broken:
        with pytest.raises(SlideReadError):
            open_slide(path)


# ------------------------------------------------------------------------------------ pyramids written here


def test_ome_subifd_pyramid_with_physical_size(tmp_path):
    path = tmp_path / "pyr.ome.tif"
    base = rgb(600, 520)
    levels = [base, base[::2, ::2], base[::4, ::4]]
    with tifffile.TiffWriter(path, ome=True) as tif:
        opts = dict(tile=(128, 128), compression="zlib", photometric="rgb")
        tif.write(base, subifds=2, metadata={"axes": "YXS", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
                                             "PhysicalSizeY": 250, "PhysicalSizeYUnit": "nm"}, **opts)
        for level in levels[1:]:
            tif.write(np.ascontiguousarray(level), subfiletype=1, **opts)
    with open_slide(path) as slide:
        assert slide.format == "ome-tiff" and slide.mpp == pytest.approx(0.25)
        assert [slide.level_shape(i) for i in range(3)] == [(600, 520), (300, 260), (150, 130)]
        assert slide.downsamples == [1.0, 2.0, 4.0]
        assert [slide.level_mpp(i) for i in range(3)] == pytest.approx([0.25, 0.5, 1.0])
        for i, level in enumerate(levels):
            np.testing.assert_array_equal(slide.read_region(i, 10, 20, 100, 90), level[10:110, 20:110])
            np.testing.assert_array_equal(np.asarray(slide.levels[i]), level)
        assert slide.best_level_for_mpp(0.25) == 0
        assert slide.best_level_for_mpp(0.5) == 1
        assert slide.best_level_for_mpp(0.49) == 1  # 0.5 <= 0.49 * 1.05: the 5 % slack
        assert slide.best_level_for_mpp(0.97) == 2  # 1.0 <= 0.97 * 1.05
        assert slide.best_level_for_mpp(0.9) == 1
        assert slide.best_level_for_mpp(0.1) == 0  # finer than the slide: level 0


def test_page_pyramid_with_resolution_in_cm(tmp_path):
    path = tmp_path / "pages.tif"
    base = rgb(256, 384, seed=1)
    with tifffile.TiffWriter(path) as tif:
        for step, subfiletype in ((1, 0), (2, 1), (4, 1)):
            tif.write(np.ascontiguousarray(base[::step, ::step]), tile=(64, 64), photometric="rgb",
                      compression="zlib", subfiletype=subfiletype, resolution=(40000 / step, 40000 / step),
                      resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        assert slide.format == "tiff-pyramid" and len(slide.levels) == 3
        assert slide.mpp == pytest.approx(0.25)  # 40000 px per cm
        assert slide.downsamples == [1.0, 2.0, 4.0]
        np.testing.assert_array_equal(slide.read_region(2, 0, 0, 64, 96), base[::4, ::4])


def test_read_region_pads_with_white_outside(tmp_path):
    path = tmp_path / "small.tif"
    base = rgb(100, 120, seed=2)
    tifffile.imwrite(path, base, tile=(32, 32), photometric="rgb")
    with open_slide(path) as slide:
        region = slide.read_region(0, -10, 110, 30, 20)
        assert region.shape == (30, 20, 3)
        np.testing.assert_array_equal(region[10:, :10], base[:20, 110:120])
        assert (region[:10] == 255).all() and (region[:, 10:] == 255).all()
        assert (slide.read_region(0, 500, 500, 4, 4) == 255).all()  # wholly outside
        with pytest.raises(InvalidInputError):
            slide.read_region(1, 0, 0, 4, 4)
        with pytest.raises(InvalidInputError):
            slide.read_region(0, 0, 0, 0, 4)


def test_plain_tiff_dpi_gives_no_mpp_and_planar_rgb_reads(tmp_path):
    base = rgb(70, 90, seed=3)
    tifffile.imwrite(tmp_path / "a.tif", base, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(base, -1, 0), photometric="rgb", planarconfig="separate")
    with open_slide(tmp_path / "a.tif") as slide:
        assert slide.format == "tiff" and slide.mpp is None and not slide.is_pyramid
    with open_slide(tmp_path / "p.tif") as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, 70, 90), base)
        np.testing.assert_array_equal(np.asarray(slide.levels[0]), base)


def test_grey_16bit_and_rgba_become_rgb_uint8(tmp_path):
    grey = np.arange(60 * 80, dtype=np.uint16).reshape(60, 80) % 4096  # 12-bit data in 16-bit samples
    tifffile.imwrite(tmp_path / "g16.tif", grey)
    out = read_image(tmp_path / "g16.tif")
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert out.max() == 255 and out[0, 0, 0] == 0
    rgba = np.dstack([rgb(40, 50, seed=4), np.full((40, 50), 128, np.uint8)])
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.tif"), rgba[..., :3])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])
    Image.fromarray((grey // 16).astype(np.uint8)).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (60, 80, 3)


def test_stack_tiff_is_unsupported(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 20, 20), np.uint8), photometric="minisblack")
    with pytest.raises(UnsupportedFileError, match="stack"):
        open_slide(tmp_path / "stack.tif")


def test_corrupt_tile_after_the_first_fails_at_read_time(tmp_path):
    path = tmp_path / "late.tif"
    tifffile.imwrite(path, rgb(256, 256, seed=5), tile=(128, 128), photometric="rgb", compression="jpeg")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[-1], tif.pages[0].databytecounts[-1]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\x00" * count
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:  # the first tile is fine
        assert slide.read_region(0, 0, 0, 10, 10).shape == (10, 10, 3)
        with pytest.raises(SlideReadError) as err:
            slide.read_region(0, 200, 200, 10, 10)
    assert_one_line_naming(err, path)


# ------------------------------------------------------------------------------------------------- tiles


def test_png_and_jpeg_tiles(tmp_path):
    image = rgb(64, 48, seed=6)
    Image.fromarray(image).save(tmp_path / "t.png")
    smooth = np.repeat(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
    Image.fromarray(smooth).save(tmp_path / "t.jpg", quality=95)
    with open_slide(tmp_path / "t.png") as slide:
        assert slide.format == "png" and slide.shape == (64, 48) and slide.mpp is None and slide.associated == {}
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, 64, 48), image)
    np.testing.assert_array_equal(read_image(tmp_path / "t.png"), image)
    jpg = read_image(tmp_path / "t.jpg")
    assert jpg.shape == (64, 48, 3) and jpg.dtype == np.uint8
    assert np.abs(jpg.astype(int) - smooth).max() < 12
    assert open_slide(tmp_path / "t.jpg").format == "jpeg"


def test_png_phys_gives_mpp(tmp_path):
    Image.fromarray(rgb(8, 8)).save(tmp_path / "dpi.png", dpi=(25400 / 0.25, 25400 / 0.25))
    assert open_slide(tmp_path / "dpi.png").mpp == pytest.approx(0.25, rel=1e-3)
    Image.fromarray(rgb(8, 8)).save(tmp_path / "screen.png", dpi=(96, 96))
    assert open_slide(tmp_path / "screen.png").mpp is None


def test_read_image_refuses_huge_images(tmp_path, monkeypatch):
    Image.fromarray(rgb(50, 50)).save(tmp_path / "big.png")
    tifffile.imwrite(tmp_path / "big.tif", rgb(50, 50), photometric="rgb")
    monkeypatch.setattr(slides, "MAX_WHOLE_IMAGE_PIXELS", 100)
    for name in ("big.png", "big.tif"):
        with pytest.raises(SlideReadError, match="open_slide"):
            read_image(tmp_path / name)


# ----------------------------------------------------------------------------------------- broken inputs


def _truncate(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("kind", ["truncated_png", "truncated_jpeg", "truncated_tiff", "truncated_jpeg_tiff",
                                  "empty_tif", "empty_png", "missing", "empty_folder", "folder", "text_as_tiff",
                                  "text_as_png"])
def test_broken_inputs_raise_one_line_slide_read_error(tmp_path, kind):
    image = rgb(300, 300, seed=7)
    if kind == "truncated_png":
        Image.fromarray(image).save(tmp_path / "x.png")
        path = _truncate(tmp_path / "x.png")
    elif kind == "truncated_jpeg":
        Image.fromarray(image).save(tmp_path / "x.jpg")
        path = _truncate(tmp_path / "x.jpg")
    elif kind == "truncated_tiff":
        tifffile.imwrite(tmp_path / "x.tif", image, tile=(64, 64), photometric="rgb")
        path = _truncate(tmp_path / "x.tif")
    elif kind == "truncated_jpeg_tiff":
        tifffile.imwrite(tmp_path / "x.tif", image, tile=(64, 64), photometric="rgb", compression="jpeg")
        path = _truncate(tmp_path / "x.tif", 0.7)
    elif kind in ("empty_tif", "empty_png"):
        path = tmp_path / ("x.tif" if kind == "empty_tif" else "x.png")
        path.write_bytes(b"")
    elif kind == "missing":
        path = tmp_path / "nope.svs"
    elif kind == "empty_folder":
        path = tmp_path / "empty"
        path.mkdir()
    elif kind == "folder":
        path = tmp_path / "tiles"
        path.mkdir()
        Image.fromarray(image).save(path / "a.png")
    else:
        path = tmp_path / ("x.tif" if kind == "text_as_tiff" else "x.png")
        path.write_text("not an image at all\n")
    for reader in (open_slide, read_image):
        with pytest.raises(SlideReadError) as err:
            reader(path)
        assert_one_line_naming(err, path)
        assert err.value.path == path


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "slide.czi"
    path.write_bytes(b"ZISRAWFILE")
    with pytest.raises(UnsupportedFileError, match=r"\.czi"):
        open_slide(path)
    assert not is_supported(path) and not is_supported("notes.txt")
    for name in ("a.svs", "a.TIF", "a.tiff", "a.ome.tif", "a.OME.TIFF", "a.png", "a.jpg", "a.JPEG", "a.ndpi",
                 "a.mrxs", "a.scn", "a.bif", "a.vms", "a.dcm"):
        assert is_supported(name), name
    fake = tmp_path / "slide.ndpi"  # a suffix OpenSlide handles, but not a slide: one clear line
    fake.write_bytes(b"II*\x00")
    with pytest.raises(SlideReadError) as err:
        open_slide(fake)
    assert_one_line_naming(err, fake)


def test_list_images(tmp_path):
    for name in ("b.png", "a.tif", "c.JPG", ".hidden.png", "notes.txt", "d.svs"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.tif", "b.png", "c.JPG", "d.svs"]
    with pytest.raises(SlideReadError):
        list_images(tmp_path / "b.png")


def test_close_and_context_manager(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", rgb(20, 20), photometric="rgb")
    slide = open_slide(tmp_path / "c.tif")
    with slide as same:
        assert same is slide
    assert slide._handles == []
    slide.close()  # twice is fine
