"""`nucseg info`: in process through nucseg.cli.main and once through the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nucseg.cli import main

NUCSEG = Path(sys.executable).parent / "nucseg"


def _pyramid(path: Path) -> Path:
    base = np.random.default_rng(0).integers(0, 256, (256, 192, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(base, subifds=1, tile=(64, 64), photometric="rgb",
                  metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        tif.write(np.ascontiguousarray(base[::2, ::2]), subfiletype=1, tile=(64, 64), photometric="rgb")
    return path


def test_info_text_and_json(tmp_path, capsys):
    path = _pyramid(tmp_path / "p.ome.tif")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ome-tiff" in out and "192 x 256" in out and "96 x 128" in out and "downsample 2" in out
    assert "0.25" in out and "40x" in out
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "ome-tiff" and info["width"] == 192 and info["height"] == 256
    assert info["mpp"] == pytest.approx(0.25) and info["magnification"] == 40.0
    assert [(lv["width"], lv["height"]) for lv in info["levels"]] == [(192, 256), (96, 128)]


def test_info_folder_and_unknown_mpp(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "b.jpg")
    assert main(["info", str(tmp_path), "--json"]) == 0
    infos = json.loads(capsys.readouterr().out)
    assert [i["format"] for i in infos] == ["png", "jpeg"] and infos[0]["mpp"] is None
    assert main(["info", str(tmp_path / "a.png")]) == 0
    assert "unknown" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["missing", "empty", "unsupported", "empty_folder", "bad_dcm", "bad_ndpi"])
def test_info_errors_are_one_line(tmp_path, capsys, kind):
    path = {"missing": tmp_path / "nope.svs", "empty": tmp_path / "e.tif", "unsupported": tmp_path / "a.czi",
            "empty_folder": tmp_path / "dir", "bad_dcm": tmp_path / "x.dcm", "bad_ndpi": tmp_path / "x.ndpi"}[kind]
    if kind in ("empty", "unsupported", "bad_dcm", "bad_ndpi"):
        path.write_bytes({"empty": b"", "unsupported": b"x", "bad_dcm": b"\0" * 128 + b"DICM" + b"x" * 50,
                          "bad_ndpi": b"II*\x00" + b"\0" * 60}[kind])
    if kind == "empty_folder":
        path.mkdir()
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nucseg info: error:") and "\n" not in err and str(path) in err


@pytest.mark.shared_data
def test_info_small_he_svs(shared_data, capsys):
    assert main(["info", str(shared_data / "slides" / "small_HE.svs")]) == 0
    out = capsys.readouterr().out
    assert "aperio-svs" in out and "2220 x 2967" in out and "0.499" in out
    assert "thumbnail 574 x 768" in out and "label 387 x 463" in out and "macro 1280 x 431" in out
    assert "level 1" not in out  # associated images are not levels


@pytest.mark.shared_data
def test_console_script(shared_data):
    ok = subprocess.run([str(NUCSEG), "info", str(shared_data / "slides" / "small_HE.svs")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "2220 x 2967" in ok.stdout
    broken = shared_data / "slides" / "broken" / "unreadable.svs"
    bad = subprocess.run([str(NUCSEG), "info", str(broken)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert "unreadable.svs" in bad.stderr and bad.stdout == ""


@pytest.mark.shared_data
def test_info_ndpi_and_dicom_folder(shared_data, capsys):
    formats = shared_data / "slides" / "formats"
    assert main(["info", str(formats / "hamamatsu_dapi_fluorescence.ndpi")]) == 0
    out = capsys.readouterr().out
    assert "3968 x 4864" in out and "0.228 µm/px" in out and "microns/pixel  0.228 " in out
    assert "reader         openslide" in out and "level 6        62 x 76" in out and "macro 1188 x 406" in out
    assert "modality       fluorescence" in out and "--allow-fluorescence" in out
    assert main(["info", str(formats / "dicom_cmu1_small_region")]) == 0  # the folder is one slide
    out = capsys.readouterr().out
    assert out.count("format         dicom") == 1 and "reader         wsidicom" in out
    assert "2220 x 2967" in out and "0.499 µm/px" in out and "level 1" not in out
    assert "associated     label 387 x 463, macro 1280 x 431, thumbnail 574 x 768" in out
    assert 'ICC profile "sRGB built-in" (sRGB already: pixels unchanged)' in out
    assert "modality       brightfield (DICOM illumination: Brightfield illumination)" in out
    assert main(["info", str(formats), "--json"]) == 0  # a folder of slides: each DICOM folder is one entry
    infos = json.loads(capsys.readouterr().out)
    assert [Path(i["path"]).name for i in infos] == ["dicom_bone_marrow", "dicom_cmu1_small_region",
                                                    "hamamatsu_dapi_fluorescence.ndpi"]
    assert [i["reader"] for i in infos] == ["wsidicom", "wsidicom", "openslide"]
    assert infos[2]["mpp"] == pytest.approx(0.228175) and infos[2]["modality"] == "fluorescence"
