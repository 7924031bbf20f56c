"""The readers beyond tifffile: OpenSlide (a real NDPI; Philips and generic tiled TIFF written here) and wsidicom
(a real DICOM WSI folder and a one-file DICOM WSI); the content-based choice of reader; ICC and fluorescence."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
import tifffile

from nucseg.errors import InvalidInputError, SlideReadError
from nucseg.io import _tiff, slides
from nucseg.io._color import icc_transform
from nucseg.io.slides import list_images, open_slide, read_image, require_brightfield, slide_modality


def formats(shared_data):
    return shared_data / "slides" / "formats"


def assert_one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    text = str(err.value)
    assert "\n" not in text and str(path) in text and text.startswith("cannot read "), text


# ---------------------------------------------------------------------------------------- real files


@pytest.mark.shared_data
def test_hamamatsu_ndpi_through_openslide(shared_data):
    import openslide

    path = formats(shared_data) / "hamamatsu_dapi_fluorescence.ndpi"
    with open_slide(path) as slide, openslide.OpenSlide(str(path)) as osr:
        assert slide.reader == "openslide" and slide.format == "ndpi" and slide.metadata["vendor"] == "hamamatsu"
        assert slide.shape == (4864, 3968)  # height x width: 3968 x 4864 (width x height)
        assert slide.mpp == pytest.approx(0.228, abs=5e-4)
        assert len(slide.levels) == 7 and slide.downsamples == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
        assert slide.level_shape(6) == (76, 62)
        assert list(slide.associated) == ["macro"] and slide.associated["macro"].shape == (406, 1188, 3)
        macro = slide.read_associated("macro")
        assert macro.dtype == np.uint8 and macro.std() > 10
        # the same pixels as OpenSlide's own read_region, at level 0 and at level 2 (level-0 corner)
        region = slide.read_region(0, 2000, 1500, 64, 96)
        raw = np.asarray(osr.read_region((1500, 2000), 0, (96, 64)))[..., :3]
        np.testing.assert_array_equal(region, raw)
        np.testing.assert_array_equal(np.asarray(slide.levels[2][500:540, 300:350]),
                                      np.asarray(osr.read_region((1200, 2000), 2, (50, 40)))[..., :3])
        assert type(slide.levels[0]).__module__.startswith("dask")
        # DAPI: blue nuclei on black
        kind, reason = slide_modality(slide)
        assert kind == "fluorescence" and "near black" in reason
        with pytest.raises(InvalidInputError, match="--allow-fluorescence"):
            require_brightfield(slide)
        require_brightfield(slide, allow_fluorescence=True)
    assert slide._handles == []  # closed


@pytest.mark.shared_data
def test_dicom_folder_is_the_same_slide_as_the_svs(shared_data):
    folder = formats(shared_data) / "dicom_cmu1_small_region"
    with open_slide(folder) as dicom, open_slide(shared_data / "slides" / "small_HE.svs") as svs:
        assert dicom.reader == "wsidicom" and dicom.format == "dicom" and dicom.path == folder
        assert dicom.shape == (2967, 2220) and dicom.mpp == pytest.approx(0.499)
        assert dicom.metadata["files"] == 4 and len(dicom.levels) == 1
        assert {k: v.shape[:2] for k, v in dicom.associated.items()} == {
            "label": (463, 387), "macro": (431, 1280), "thumbnail": (768, 574)}
        np.testing.assert_array_equal(dicom.read_associated("thumbnail"), svs.read_associated("thumbnail"))
        np.testing.assert_array_equal(dicom.read_region(0, 1000, 800, 300, 200), svs.read_region(0, 1000, 800, 300, 200))
        np.testing.assert_array_equal(np.asarray(dicom.levels[0][:50, -70:]), svs.read_region(0, 0, 2150, 50, 70))
        # the profile wsidicom embedded is sRGB: recorded, not applied (pixels as stored)
        assert dicom.icc == {"description": "sRGB built-in", "applied": False}
        assert slide_modality(dicom) == ("brightfield", "DICOM illumination: Brightfield illumination")
        with pytest.raises(InvalidInputError, match="no associated image 'overview'"):
            dicom.read_associated("overview")
    one_file = sorted(folder.glob("*.dcm"))[0]  # any file of the series opens the whole series
    with open_slide(one_file) as slide:
        assert slide.shape == (2967, 2220) and set(slide.associated) == {"label", "macro", "thumbnail"}
    assert list_images(folder) == [folder]  # one input, not four images
    assert folder in list_images(formats(shared_data))


@pytest.mark.shared_data
def test_one_file_dicom_with_a_coarse_pixel_size(shared_data):
    path = formats(shared_data) / "dicom_bone_marrow" / "jpeg.dcm"
    with open_slide(path) as slide:
        assert slide.reader == "wsidicom" and slide.shape == (715, 957)
        assert slide.mpp == pytest.approx(16.783)  # as the file says (a low-power overview scan)
        assert slide.associated == {} and slide.icc is None
        assert slide_modality(slide)[0] == "brightfield"
    assert read_image(path).shape == (715, 957, 3)


@pytest.mark.shared_data
def test_dicom_errors(shared_data, tmp_path):
    folder = formats(shared_data) / "dicom_cmu1_small_region"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 20)
    with pytest.raises(SlideReadError) as err:
        open_slide(broken)
    assert_one_line_naming(err, broken)
    two = tmp_path / "two"
    two.mkdir()
    for f in folder.glob("*.dcm"):
        shutil.copy(f, two / f.name)
    shutil.copy(formats(shared_data) / "dicom_bone_marrow" / "jpeg.dcm", two / "other.dcm")
    with pytest.raises(SlideReadError, match="2 DICOM series"):
        open_slide(two)
    with open_slide(two / "other.dcm") as slide:  # one file picks its own series out of the folder
        assert slide.shape == (715, 957)


# ------------------------------------------------------------------------------ OpenSlide files made here


def _tissue(h: int = 512, w: int = 768) -> np.ndarray:
    base = np.full((h, w, 3), 235, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    base[(yy - h // 2) ** 2 + (xx - w // 2) ** 2 < (h // 3) ** 2] = (180, 90, 160)
    return base


def _philips_xml(spacing_mm: float, levels: int) -> str:
    def attr(name: str, value: str, vr: str = "IString") -> str:
        return f'<Attribute Name="{name}" PMSVR="{vr}">{value}</Attribute>'

    pair = lambda s: f"&quot;{s:.6f}&quot; &quot;{s:.6f}&quot;"  # noqa: E731
    reps = "".join(f'<DataObject ObjectType="PixelDataRepresentation">'
                   f'{attr("DICOM_PIXEL_SPACING", pair(spacing_mm * 2**i), "IDoubleArray")}'
                   f'{attr("PIIM_PIXEL_DATA_REPRESENTATION_NUMBER", str(i), "IUInt16")}</DataObject>'
                   for i in range(levels))
    wsi = (f'<DataObject ObjectType="DPScannedImage">{attr("PIM_DP_IMAGE_TYPE", "WSI")}'
           f'{attr("DICOM_PIXEL_SPACING", pair(spacing_mm), "IDoubleArray")}'
           f'<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" PMSVR="IDataObjectArray"><Array>{reps}'
           "</Array></Attribute></DataObject>")
    return ('<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">'
            f'{attr("DICOM_MANUFACTURER", "PHILIPS")}'
            f'<Attribute Name="PIM_DP_SCANNED_IMAGES" PMSVR="IDataObjectArray"><Array>{wsi}</Array></Attribute>'
            "</DataObject>")


def test_philips_tiff_goes_to_openslide(tmp_path):
    """A Philips-style TIFF (Software "Philips...", DPUfsImport XML) has a .tiff suffix but needs OpenSlide."""
    base = _tissue()
    path = tmp_path / "scan.tiff"
    with tifffile.TiffWriter(path) as tif:
        for k, step in enumerate((1, 2, 4)):
            tif.write(np.ascontiguousarray(base[::step, ::step]), tile=(128, 128), photometric="rgb",
                      compression="jpeg", subfiletype=0 if k == 0 else 1, metadata=None,
                      description=_philips_xml(0.00025, 3) if k == 0 else None,
                      software="Philips DP v1.0" if k == 0 else None)
    with open_slide(path) as slide:
        assert slide.reader == "openslide" and slide.format == "philips-tiff"
        assert slide.mpp == pytest.approx(0.25)  # from DICOM_PIXEL_SPACING in mm
        assert [slide.level_shape(i) for i in range(3)] == [(512, 768), (256, 384), (128, 192)]
        assert slide.downsamples == [1.0, 2.0, 4.0]
        assert np.abs(slide.read_region(0, 0, 0, 512, 768).astype(int) - base).mean() < 3  # JPEG
        assert np.abs(slide.read_region(2, 0, 0, 128, 192).astype(int) - base[::4, ::4]).mean() < 3
        assert slide_modality(slide)[0] == "brightfield"


def test_generic_tiled_tiff_openslide_reader_and_fallback(tmp_path, monkeypatch):
    base = _tissue(300, 420)
    path = tmp_path / "generic.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(base, tile=(64, 64), photometric="rgb", compression="zlib")
        tif.write(np.ascontiguousarray(base[::2, ::2]), tile=(64, 64), photometric="rgb", compression="zlib",
                  subfiletype=1)
    with open_slide(path) as slide:  # tifffile serves it
        assert slide.reader == "tifffile"
    from nucseg.io._openslide import open_openslide

    with open_openslide(path) as slide:  # OpenSlide gives the same pixels
        assert slide.format == "tiff-openslide" and slide.reader == "openslide" and len(slide.levels) == 2
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, 300, 420), base)
        np.testing.assert_array_equal(np.asarray(slide.levels[1]), base[::2, ::2])
        assert (slide.read_region(0, 290, 410, 20, 20)[10:] == 255).all()  # outside: glass

    def cannot(p):
        raise SlideReadError(p, "the first tile of level 0 cannot be decoded (unknown compression)")

    monkeypatch.setattr(_tiff, "open_tiff", cannot)  # a tiled TIFF tifffile cannot decode: OpenSlide takes it
    with open_slide(path) as slide:
        assert slide.reader == "openslide"
        np.testing.assert_array_equal(slide.read_region(0, 100, 100, 50, 50), base[100:150, 100:150])
    text = tmp_path / "text.tif"
    text.write_text("not a tiff")
    with pytest.raises(SlideReadError, match="unknown compression"):  # neither reads it: tifffile's reason
        open_slide(text)


# ------------------------------------------------------------------------------------------ colour, errors


def _linear_rgb_profile() -> bytes:
    """The sRGB primaries with linear tone curves: a profile that is not sRGB (dark values get brighter)."""
    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    n = struct.unpack(">I", data[128:132])[0]
    for i in range(n):
        sig, offset = bytes(data[132 + 12 * i : 136 + 12 * i]), struct.unpack(">I", data[136 + 12 * i : 140 + 12 * i])[0]
        if sig.endswith(b"TRC") and data[offset : offset + 4] == b"para":
            params = (1.0, 1.0, 0.0, 1.0, 0.0)  # type 3: Y = (aX + b)^g above d, cX below: Y = X
            data[offset + 12 : offset + 32] = b"".join(struct.pack(">i", round(p * 65536)) for p in params)
    return bytes(data)


def test_icc_profile_is_applied_and_srgb_left_alone(tmp_path):
    grey = np.full((64, 64, 3), 64, np.uint8)
    linear = _linear_rgb_profile()
    tifffile.imwrite(tmp_path / "linear.tif", grey, photometric="rgb", extratags=[(34675, 7, len(linear), linear, True)])
    with open_slide(tmp_path / "linear.tif") as slide:
        assert slide.icc is not None and slide.icc["applied"] is True
        out = slide.read_region(0, 0, 0, 64, 64)
        assert 130 < out.mean() < 145  # linear 64/255 is sRGB ~137
        np.testing.assert_array_equal(np.asarray(slide.levels[0]), out)  # lazy level and reader agree
    from PIL import Image, ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(grey).save(tmp_path / "srgb.png", icc_profile=srgb)
    Image.fromarray(grey).save(tmp_path / "linear.png", icc_profile=linear)
    with open_slide(tmp_path / "srgb.png") as slide:
        assert slide.icc == {"description": "sRGB built-in", "applied": False}
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, 64, 64), grey)
    assert 130 < read_image(tmp_path / "linear.png").mean() < 145
    assert icc_transform(b"not a profile") is None  # a broken profile: raw pixels, no crash


def test_fluorescence_from_pixels_and_cli_refuses_it(tmp_path, capsys):
    from PIL import Image

    from nucseg.cli import main

    dark = np.zeros((128, 128, 3), np.uint8)
    dark[40:60, 40:60, 2] = 220  # a blue DAPI nucleus on black
    Image.fromarray(dark).save(tmp_path / "dapi.png")
    with open_slide(tmp_path / "dapi.png") as slide:
        assert slide_modality(slide)[0] == "fluorescence"
    assert main(["predict", str(tmp_path / "dapi.png"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "fluorescence" in err and "--allow-fluorescence" in err and "\n" not in err.strip()
    assert main(["info", str(tmp_path / "dapi.png")]) == 0
    assert "modality       fluorescence" in capsys.readouterr().out


def test_memory_and_bugs_are_not_called_corrupt(tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", _tissue(64, 64), photometric="rgb")
    with open_slide(tmp_path / "t.tif") as slide:
        def out_of_memory(*args):
            raise MemoryError

        def bug(*args):
            raise TypeError("a bug, not a damaged file")

        slide._readers[0] = out_of_memory
        with pytest.raises(SlideReadError, match="not enough memory") as err:
            slide.read_region(0, 0, 0, 8, 8)
        assert "damaged" not in str(err.value) and "corrupt" not in str(err.value)
        slide._readers[0] = bug
        with pytest.raises(TypeError):  # a bug surfaces as itself
            slide.read_region(0, 0, 0, 8, 8)
    for cls in (TypeError, KeyError, IndexError, MemoryError):
        assert not issubclass(cls, slides.READ_ERRORS)


def test_twelve_bit_data_is_not_nearly_black(tmp_path):
    from nucseg.io.base import as_rgb_uint8

    twelve = (np.arange(100 * 100, dtype=np.uint16).reshape(100, 100) % 4000)  # 12-bit camera data in uint16
    out = as_rgb_uint8(twelve)
    assert out.shape == (100, 100, 3) and out.max() >= 249  # 3999 / 4095 * 255, not 3999 / 65535 * 255 = 15
    assert as_rgb_uint8(np.full((4, 4), 1000, np.uint16), max_value=4095)[0, 0, 0] == 62  # a fixed scale
    # OME SignificantBits=12: every tile is scaled by 4095 even when this slide's maximum is low
    tifffile.imwrite(tmp_path / "dim.ome.tif", np.full((32, 32), 1000, np.uint16),
                     metadata={"axes": "YX", "SignificantBits": 12})
    assert read_image(tmp_path / "dim.ome.tif")[0, 0, 0] == 62


@pytest.mark.slow
@pytest.mark.shared_data
def test_predict_dicom_folder_and_svs_give_the_same_nuclei(shared_data, tmp_path, capsys):
    """`nucseg predict` with the default model on the DICOM folder (one input) and on the SVS, same region."""
    from nucseg.cli import main
    from nucseg.metrics.matching import object_metrics

    region = "800,1000,320,320"  # x,y,width,height at level 0 (0.499 µm/px): tissue with a few dozen nuclei
    sources = {"dicom": formats(shared_data) / "dicom_cmu1_small_region", "svs": shared_data / "slides" / "small_HE.svs"}
    labels = {}
    for name, src in sources.items():
        out = tmp_path / name
        assert main(["predict", str(src), "--out", str(out), "--region", region, "--quiet"]) == 0
        [tif] = out.glob("*_labels.tif")  # the folder is one input: one set of outputs
        labels[name] = tifffile.imread(tif)
    capsys.readouterr()
    assert labels["dicom"].shape == labels["svs"].shape and labels["svs"].max() > 20
    scores = object_metrics(labels["svs"], labels["dicom"])
    assert scores["f1"] >= 0.99, scores


@pytest.mark.shared_data
def test_a_corrupt_tile_is_a_slide_read_error_in_a_fresh_process(shared_data, tmp_path):
    """imagecodecs loads its codecs' error classes lazily: a JPEG error that comes after an earlier, other read
    error (which built the tuple of read errors) must be caught too."""
    import subprocess
    import sys

    text = tmp_path / "text.tif"
    text.write_text("not a tiff")
    code = ("from nucseg.io.slides import open_slide\nfrom nucseg.errors import SlideReadError\n"
            f"for path in ({str(text)!r}, {str(shared_data / 'slides' / 'broken' / 'unreadable.svs')!r}):\n"
            "    try:\n        open_slide(path)\n    except SlideReadError as err:\n        print('ok', err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("ok cannot read") for line in lines), done.stderr[-2000:]


def test_openslide_applies_the_slide_icc_profile(tmp_path):
    from nucseg.io._openslide import open_openslide

    linear = _linear_rgb_profile()
    path = tmp_path / "icc.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.full((128, 128, 3), 64, np.uint8), tile=(64, 64), photometric="rgb", compression="zlib",
                  extratags=[(34675, 7, len(linear), linear, True)])
    with open_openslide(path) as slide:
        assert slide.icc["applied"] is True
        assert 130 < slide.read_region(0, 0, 0, 16, 16).mean() < 145  # linear 64 -> sRGB ~137
        assert 130 < np.asarray(slide.levels[0][:16, :16]).mean() < 145


@pytest.mark.shared_data
def test_dicom_files_without_a_suffix(shared_data, tmp_path):
    """PACS exports often name files IM0001, IM0002...: the DICOM preamble tells them apart."""
    for i, f in enumerate(sorted((formats(shared_data) / "dicom_cmu1_small_region").glob("*.dcm"))):
        shutil.copy(f, tmp_path / f"IM{i:04d}")
    (tmp_path / "notes.txt").write_text("case 12")
    assert list_images(tmp_path) == [tmp_path]
    with open_slide(tmp_path) as slide:
        assert slide.shape == (2967, 2220) and slide.metadata["files"] == 4
    with open_slide(tmp_path / "IM0002") as slide:
        assert slide.reader == "wsidicom"


def test_modality_of_a_big_single_level_reads_a_few_windows(tmp_path, monkeypatch):
    from nucseg.io import _color

    monkeypatch.setattr(_color, "SAMPLE_SIDE", 64)
    image = np.full((400, 500, 3), 240, np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(64, 64), photometric="rgb")
    with open_slide(tmp_path / "big.tif") as slide:
        reads = []
        read = slide._readers[0]
        slide._readers[0] = lambda *box: reads.append(box) or read(*box)
        kind, reason = slide_modality(slide)
        assert kind == "brightfield" and "5 x 5 windows of 128 px" in reason
        assert len(reads) == 25 and all((y1 - y0) * (x1 - x0) == 128 * 128 for y0, y1, x0, x1 in reads)


def _leica_xml(w: int, h: int) -> str:
    """A Leica SCN collection (sizes in nm): a macro image over the whole slide and one main image in it."""
    bright = "<illuminationSettings><illuminationSource>brightfield</illuminationSource></illuminationSettings>"
    return ('<?xml version="1.0" encoding="utf-8"?><scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">'
            '<collection name="t" sizeX="500000" sizeY="300000"><barcode>TEST-1</barcode>'
            f'<image name="macro"><view sizeX="500000" sizeY="300000" offsetX="0" offsetY="0"/>'
            f'<scanSettings>{bright}</scanSettings><pixels sizeX="250" sizeY="150">'
            '<dimension sizeX="250" sizeY="150" r="0" ifd="2"/></pixels></image>'
            '<image name="main"><device model="Leica SCN400" version="1"/>'
            '<view sizeX="384000" sizeY="256000" offsetX="50000" offsetY="20000"/>'
            f'<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings>{bright}</scanSettings>'
            f'<pixels sizeX="{w}" sizeY="{h}"><dimension sizeX="{w}" sizeY="{h}" r="0" ifd="0"/>'
            f'<dimension sizeX="{w // 4}" sizeY="{h // 4}" r="1" ifd="1"/></pixels></image></collection></scn>')


def test_leica_scn_goes_to_openslide(tmp_path):
    """A Leica-style SCN: a 768 x 512 main image at 0.5 µm/px placed at (100, 40) px in a 1000 x 600 slide."""
    base = _tissue(512, 768)
    path = tmp_path / "slide.scn"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        opts = {"photometric": "rgb", "compression": "jpeg", "metadata": None, "resolutionunit": "CENTIMETER"}
        tif.write(base, tile=(128, 128), description=_leica_xml(768, 512), resolution=(20000, 20000), **opts)
        tif.write(np.ascontiguousarray(base[::4, ::4]), tile=(64, 64), resolution=(5000, 5000), **opts)
        tif.write(np.full((150, 250, 3), 200, np.uint8), tile=(64, 64), **opts)
    with open_slide(path) as slide:
        assert slide.reader == "openslide" and slide.format == "scn" and slide.metadata["objective_power"] == 20
        assert slide.shape == (600, 1000) and slide.level_shape(1) == (150, 250) and slide.downsamples == [1.0, 4.0]
        assert slide.mpp == pytest.approx(0.5)
        assert (slide.read_region(0, 0, 0, 30, 90) == 255).all()  # outside the scanned area: glass, not black
        inside = slide.read_region(0, 40, 100, 512, 768)
        assert np.abs(inside.astype(int) - base).mean() < 3
        assert slide.read_associated("macro").shape == (150, 250, 3)
