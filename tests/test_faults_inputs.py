"""Issue 21, faults 2-5 and 9-12, 18: bad inputs end in one clear line (exit 2 in the CLI), harm nothing, and stay
within bounded memory. Each test failed before its fix.

The network is the deterministic BlobNet (fake_models) unless a test says otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fake_models import blob_image, install_blobnet
from nucseg.cli import main

MODEL = ["--model", "unet-efficientnet-b0", "--quiet"]
TESTS = Path(__file__).resolve().parent
#: the package this test run imports (this tree's src, or whatever PYTHONPATH puts first)
SRC = Path(__import__("nucseg").__file__).resolve().parents[1]


def _one_error_line(err: str, command: str = "predict") -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"nucseg {command}: error:"), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------ 18: --region is x,y,w,h


@pytest.fixture
def portrait(tmp_path, monkeypatch):
    """A portrait TIFF, 300 px wide and 500 px high, with nuclei only in its lower left corner."""
    install_blobnet(monkeypatch)
    image = np.full((500, 300, 3), 235, np.uint8)
    corner, truth = blob_image((100, 80), n=4, seed=3)
    image[380:480, 10:90] = corner
    path = tmp_path / "portrait.tif"
    tifffile.imwrite(path, image, photometric="rgb")
    return path, truth


def test_region_is_x_y_width_height_as_qupath_gives_it(portrait, tmp_path, capsys):
    path, truth = portrait
    out = tmp_path / "o"
    # x=10 y=380, 80 wide, 100 high: the corner with the nuclei (read y,x,h,w it lies outside this portrait image)
    assert main(["predict", str(path), "--out", str(out), *MODEL, "--region", "10,380,80,100", "--mpp", "0.25",
                 "--format", "tif,csv"]) == 0
    labels = tifffile.imread(out / "portrait_labels.tif")
    assert labels.shape == (100, 80) and labels.max() == truth.max()
    summary = json.loads((out / "portrait_predict.json").read_text())
    assert summary["region"] == [380, 10, 100, 80]  # the engine's order, as BATCH.md says
    rows = (out / "portrait_nuclei.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == truth.max()
    capsys.readouterr()


def test_a_region_outside_the_image_is_one_line_in_the_slide_world_s_terms(portrait, tmp_path, capsys):
    path, _ = portrait
    assert main(["predict", str(path), "--out", str(tmp_path / "o"), *MODEL, "--region", "400,0,10,10"]) == 2
    line = capsys.readouterr().err
    assert "x=400, y=0" in line and "300 px wide" in line and "portrait.tif" in line and "Traceback" not in line


@pytest.mark.parametrize("bad", ["1,2,3", "a,b,c,d", "0,0,0,10", "-5,0,10,10"])
def test_a_bad_region_is_one_line_saying_the_order(portrait, tmp_path, capsys, bad):
    path, _ = portrait
    assert main(["predict", str(path), "--out", str(tmp_path / "o"), *MODEL, f"--region={bad}"]) == 2
    assert "x,y,width,height" in _one_error_line(capsys.readouterr().err)


def test_help_says_x_y_width_height(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--region X,Y,W,H" in text and "x,y,width,height in level-0 pixels, as QuPath and OpenSlide" in text


# ------------------------------------------------------------------------------- helpers: a capped CLI process

#: address space for a CLI child process: enough to import torch, dask and onnxruntime (measured: 3 GiB is not),
#: far too little for any of the decompression bombs and unbounded sizes below
MEMORY_CAP_GB = 4


def run_capped(code: str, cap_gb: int = MEMORY_CAP_GB, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run Python `code` in a child whose address space is capped (RLIMIT_AS): a fault that would fill the memory
    dies there with a MemoryError instead of taking the machine with it. The child sees this tree's package."""
    prelude = (f"import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, ({cap_gb} << 30, {cap_gb} << 30))\n"
               f"sys.path[:0] = [{str(TESTS)!r}]\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout,
                          env=env)


def cli_capped(args: list[str], cap_gb: int = MEMORY_CAP_GB, timeout: int = 240) -> subprocess.CompletedProcess:
    """`nucseg ARGS` in a capped child process."""
    return run_capped(f"from nucseg.cli import main\nsys.exit(main({args!r}))", cap_gb, timeout)


# -------------------------------------------------------------------------------- 4: --mpp and a model's mpp


def _model_folder(tmp_path, name="odd-model", **changes):
    """A model folder: the shipped config with `changes` (None removes a key), and an empty weights file (the
    config is refused before the weights are read)."""
    from nucseg.models.registry import shipped_models

    config = json.loads((shipped_models()["nucseg-default"] / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_an_implausible_mpp_is_one_line_before_any_work(tmp_path):
    """1e9 ran out of memory, inf divided by zero, 1e-9 made "array is too big"; -0.25 and nan are nonsense."""
    from PIL import Image

    Image.fromarray(blob_image((64, 64), n=2)[0]).save(tmp_path / "t.png")
    values = ["1e9", "inf", "1e-9", "-0.25", "nan"]
    code = f"""
import contextlib, io, json
from nucseg.cli import main
for value in {values!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["predict", {str(tmp_path / "t.png")!r}, "--out", {str(tmp_path)!r} + "/o" + value,
                   "--model", "unet-efficientnet-b0", "--quiet", "--mpp=" + value])
    print(json.dumps([value, rc, err.getvalue()]))
"""
    done = run_capped(code)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    assert [r[0] for r in results] == values, done.stderr[-2000:]
    for value, rc, err in results:
        line = _one_error_line(err)
        assert rc == 2, (value, err)
        assert line.startswith(f"nucseg predict: error: --mpp {float(value)!r}") and "between 0.05 and 20" in line
        assert not (tmp_path / f"o{value}").exists()  # refused before the output folder was made


def test_pixels_far_coarser_than_the_model_s_are_refused_per_input(tmp_path, monkeypatch, capsys):
    """4 µm/px is a plausible size, but 16 times the model's 0.25: nuclei a few pixels wide, an image upsampled 256
    times. The engine refuses it for that input, in one line."""
    from PIL import Image

    install_blobnet(monkeypatch)
    Image.fromarray(blob_image((64, 64), n=2)[0]).save(tmp_path / "t.png")
    assert main(["predict", str(tmp_path / "t.png"), "--out", str(tmp_path / "o"), *MODEL, "--mpp", "4"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "t.png" in line and "16 times coarser than the model's 0.25" in line
    assert not (tmp_path / "o" / "t_labels.tif").exists()


@pytest.mark.parametrize("mpp", [-0.25, 0, 1e9])
def test_a_model_config_with_an_implausible_mpp_is_refused(tmp_path, capsys, mpp):
    folder = _model_folder(tmp_path, mpp=mpp)
    assert main(["models", str(folder)]) == 2
    line = _one_error_line(capsys.readouterr().err, "models")
    assert str(folder / "config.json") in line and "mpp" in line


def test_finetune_refuses_an_implausible_mpp_and_too_coarse_images(tmp_path):
    from PIL import Image

    from nucseg.config import FinetuneConfig
    from nucseg.errors import InvalidInputError
    from nucseg.jobs.finetune import folder_pairs

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    image, labels = blob_image((64, 64), n=3)
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "labels" / "a.png")
    for mpp, said in ((1e9, "between 0.05 and 20"), (float("inf"), "between 0.05 and 20"),
                      (4.0, "16 times coarser")):
        with pytest.raises(InvalidInputError, match=said):
            folder_pairs(tmp_path / "images", tmp_path / "labels", val_images=tmp_path / "images",
                         val_labels=tmp_path / "labels", mpp=mpp, config=FinetuneConfig(base_model="nucseg-default"))


# ------------------------------------------------------------------------------ 9: model configs, one schema

BAD_CONFIGS = {
    "zero std": ({"normalization": {"mean": [0.5, 0.5, 0.5], "std": [0, 0, 0]}}, "normalization.std"),
    "unknown postprocess key": ({"postprocess": {"min_area": 40, "min_aera": 15}}, "min_aera"),
    "bad postprocess value": ({"postprocess": {"foreground_threshold": 7}}, "foreground threshold"),
    "normalization as a list": ({"normalization": [0.5, 0.5]}, "normalization must be"),
    "dunder architecture": ({"architecture": "__class__"}, "architecture must be one of Unet"),
    "other architecture": ({"architecture": "FPN"}, "architecture must be one of Unet"),
    "heads that do not fit": ({"heads": ["foreground", "contour"]}, "heads must be"),
    "no sha256": ({"sha256": None}, "no 'sha256'"),
    "short sha256": ({"sha256": "abc"}, "sha256 must be"),
    "mpp as text": ({"mpp": "0.25"}, "mpp must be a number"),
    "unknown encoder": ({"encoder": "resnet9000"}, "encoder must be one of"),
    "decoder of 4": ({"decoder_channels": [64, 32, 16, 8]}, "decoder_channels must be"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_model_config_that_breaks_the_schema_is_one_line(tmp_path, capsys, case):
    changes, said = BAD_CONFIGS[case]
    folder = _model_folder(tmp_path, **changes)
    for command in (["models", str(folder)],
                    ["predict", str(tmp_path / "none.png"), "--out", str(tmp_path / "o"), "--model", str(folder)]):
        if command[0] == "predict":
            (tmp_path / "none.png").write_bytes(b"")
        assert main(command) == 2, case
        line = _one_error_line(capsys.readouterr().err, command[0])
        assert str(folder / "config.json") in line and said in line, line
    assert not (tmp_path / "o").exists()


def test_a_config_that_is_not_an_object_is_one_line(tmp_path, capsys):
    folder = _model_folder(tmp_path)
    (folder / "config.json").write_text("[1, 2]")
    assert main(["models", str(folder)]) == 2
    assert "must be a JSON object, not a list" in _one_error_line(capsys.readouterr().err, "models")


def test_the_schema_takes_the_shipped_config():
    from nucseg.models.registry import resolve_model

    spec = resolve_model("nucseg-default")
    assert spec.heads == ("foreground", "contour", "distance") and len(spec.sha256) == 64


def test_the_schema_takes_decoder_channels(tmp_path):
    from nucseg.models.registry import spec_from_folder

    lean = spec_from_folder(_model_folder(tmp_path, name="v3", decoder_channels=[64, 32, 16, 16, 8]))
    assert lean.decoder_channels == (64, 32, 16, 16, 8)
    assert spec_from_folder(_model_folder(tmp_path, name="v2", decoder_channels=None)).decoder_channels is None


def test_build_never_looks_up_another_architecture():
    import dataclasses

    from nucseg.errors import ModelError
    from nucseg.models.build import build_network
    from nucseg.models.registry import untrained_spec

    with pytest.raises(ModelError, match="nucseg builds Unet"):
        build_network(dataclasses.replace(untrained_spec("resnet18"), architecture="__class__"))


# ------------------------------------------------------------------- 10: one damaged version, the rest listed


@pytest.fixture
def home_with_a_damaged_version(tmp_path, monkeypatch):
    """$NUCSEG_HOME/models with a good version and three damaged ones (bad JSON, schema, no weights)."""
    home = tmp_path / "home"
    monkeypatch.setenv("NUCSEG_HOME", str(home))
    (home / "models").mkdir(parents=True)
    good = _model_folder(home / "models", name="good-v1", description="a good version")
    _model_folder(home / "models", name="zero-std", normalization={"mean": [0.5] * 3, "std": [0, 0, 0]})
    truncated = _model_folder(home / "models", name="truncated")
    (truncated / "config.json").write_text('{"name": "truncated", "enc')
    (_model_folder(home / "models", name="no-weights") / "model.safetensors").unlink()
    return home, good


def test_nucseg_models_lists_the_rest_and_names_each_damaged_version(home_with_a_damaged_version, capsys):
    home, good = home_with_a_damaged_version
    assert main(["models"]) == 2
    out, err = capsys.readouterr()
    assert "nucseg-default" in out and str(good) in out and "a good version" in out and "unet-resnet18" in out
    assert "zero-std" not in out and "truncated" not in out and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("nucseg models: error:") for line in lines)
    for name, why in (("zero-std", "normalization.std"), ("truncated", "cannot read"), ("no-weights", "needs")):
        [line] = [line for line in lines if str(home / "models" / name) in line]
        assert why in line and "left out of the model list" in line


@pytest.mark.gui
def test_the_widgets_lists_show_the_rest_and_name_each_damaged_version(home_with_a_damaged_version,
                                                                        make_napari_viewer, monkeypatch):
    import napari.utils.notifications

    from nucseg._napari import model_list
    from nucseg._napari.finetune_widget import FinetuneWidget
    from nucseg._napari.segment_widget import SegmentWidget

    home, good = home_with_a_damaged_version
    warned: list[str] = []
    monkeypatch.setattr(napari.utils.notifications, "show_warning", warned.append)
    monkeypatch.setattr(model_list, "_named_damaged", set(), raising=False)
    viewer = make_napari_viewer()
    segment = SegmentWidget(viewer)
    finetune = FinetuneWidget(viewer)
    assert str(good.resolve()) in segment.model_combo.model_keys()
    assert finetune.model_combo.findData(str(good)) >= 0 and finetune.model_combo.findData("nucseg-default") >= 0
    assert len(warned) == 3  # each named once, however many lists refresh
    assert any("zero-std" in w and "normalization.std" in w for w in warned)
    segment.model_combo.refresh()
    finetune.refresh_versions()
    assert len(warned) == 3


# --------------------------------------------------------------- 2: real slides as one Dask task, and as blocks

from test_distributed import scheduler  # noqa: E402, F401 - fixture: a local cluster whose workers run BlobNet

SLIDES = {"svs": ("slides", "small_HE.svs"), "dicom": ("slides", "formats", "dicom_cmu1_small_region")}


@pytest.mark.shared_data
@pytest.mark.parametrize("kind", list(SLIDES))
def test_a_real_slide_region_of_one_task_runs_on_dask_workers(kind, scheduler, shared_data, tmp_path,  # noqa: F811
                                                               monkeypatch, capsys):
    """The workers check the slide's thumbnail (brightfield or fluorescence): its lazy pixels were computed on the
    cluster from inside the task ("Could not serialize object of type _HLGExprSequence")."""
    install_blobnet(monkeypatch)
    slide = shared_data.joinpath(*SLIDES[kind])
    common = [str(slide), *MODEL, "--region", "800,600,500,500", "--format", "tif,csv"]
    assert main(["predict", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "dist"), "--scheduler", scheduler]) == 0, \
        capsys.readouterr().err
    [local] = (tmp_path / "local").glob("*_labels.tif")
    dist = tmp_path / "dist" / local.name
    labels = tifffile.imread(dist)
    assert labels.shape == (500, 500) and labels.max() > 20  # labels at the input's resolution
    np.testing.assert_array_equal(labels, tifffile.imread(local))
    summary = json.loads(next((tmp_path / "dist").glob("*_predict.json")).read_text())
    assert "blocks" not in summary and summary["worker"]["address"].startswith("tcp://127.0.0.1:")
    assert summary["region"] == [600, 800, 500, 500]


@pytest.mark.shared_data
def test_a_real_svs_of_several_blocks_runs_as_block_tasks(scheduler, shared_data, tmp_path, monkeypatch,  # noqa: F811
                                                          capsys):
    install_blobnet(monkeypatch)
    common = [str(shared_data / "slides" / "small_HE.svs"), *MODEL, "--region", "700,500,700,700",
              "--block-size", "512", "--format", "tif"]
    assert main(["predict", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "dist"), "--scheduler", scheduler]) == 0, \
        capsys.readouterr().err
    labels = tifffile.imread(tmp_path / "dist" / "small_HE_labels.tif")
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "local" / "small_HE_labels.tif"))
    summary = json.loads((tmp_path / "dist" / "small_HE_predict.json").read_text())
    assert summary["blocks"] >= 4 and sum(summary["block_workers"].values()) == summary["blocks"]


# ----------------------------------------------------------------- 3: the tissue mask of a flat (one-level) TIFF


def test_the_blockwise_tissue_mask_equals_the_whole_image_s():
    from nucseg.inference.tissue import tissue_mask, tissue_mask_blockwise

    image = np.full((301, 253, 3), 240, np.uint8)
    blobs, _ = blob_image((200, 180), n=12, seed=5)
    image[40:240, 30:210] = blobs
    rng = np.random.default_rng(0)
    image[250:290, 200:250] = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)  # a pen mark at the corner
    for pool in (1, 3, 8):
        for block in (50, 64, 4096):
            got = tissue_mask_blockwise(lambda y, x, h, w: image[y : y + h, x : x + w], image.shape[:2], pool=pool,
                                        block=block)
            np.testing.assert_array_equal(got, tissue_mask(image, pool=pool), err_msg=f"pool {pool} block {block}")


def _flat_tiled_tiff(path, side=20480, tile=512):
    """A one-level tiled zlib TIFF of side² px (1.2 GB of pixels, about 1.5 MB on disk): glass with a few stained
    tiles, written tile by tile."""
    white = np.full((tile, tile, 3), 245, np.uint8)
    stained, _ = blob_image((tile, tile), n=30, seed=1)
    n = side // tile

    def tiles():
        for i in range(n):
            for j in range(n):
                yield stained if (i, j) in ((3, 4), (20, 20), (39, 0)) else white

    tifffile.imwrite(path, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                     compression="zlib", resolution=(40000, 40000), resolutionunit="CENTIMETER")
    return path


@pytest.mark.slow
def test_a_flat_20480_px_tiff_gets_its_tissue_mask_in_bounded_memory(tmp_path):
    """The mask read level 0 whole and made it float32: more than 9 GB for this 1.5 MB file. Under a 2 GiB cap the
    mask must come out block by block, with the stained tiles found and the glass skipped."""
    path = _flat_tiled_tiff(tmp_path / "flat.tif")
    code = f"""
import numpy as np
from nucseg.inference.source import ScaledSource
from nucseg.io.slides import open_slide

with open_slide({str(path)!r}) as slide:
    assert not slide.is_pyramid and slide.mpp == 0.25, (slide.levels, slide.mpp)
    tissue = ScaledSource(slide, 0.25).tissue_mask()
    mask, down = tissue.mask, tissue.down
print(*mask.shape, down, mask[192:256, 256:320].mean(), mask[2496:2560, 0:64].mean(), mask[400:1200, 400:1200].mean())
"""
    done = run_capped(code, cap_gb=2, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    h, w, down, stained, corner, glass = (float(v) for v in done.stdout.split())
    assert (h, w, down) == (2560, 2560, 8.0)
    assert stained > 0.1 and corner > 0.1 and glass == 0.0  # the three stained tiles found (one in a corner)


# ------------------------------------------------------------------------------ 11: decompression bombs refused


def _zlib_zeros(n_bytes: int, unit: int) -> bytes:
    """A zlib stream of `n_bytes` zero bytes without ever holding them: `unit` zeros compressed once after a full
    flush (so every later unit compresses to the same bytes), repeated, then the final block and the Adler-32."""
    import zlib

    assert n_bytes % unit == 0
    c = zlib.compressobj(1)
    first = c.compress(bytes(unit)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(unit)) + c.flush(zlib.Z_FULL_FLUSH)
    adler = ((n_bytes % 65521) << 16) | 1  # Adler-32 of zeros: a stays 1, b counts the bytes
    return first + again * (n_bytes // unit - 1) + b"\x03\x00" + adler.to_bytes(4, "big")


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """A single-strip 25000² RGB zlib TIFF (8 MB on disk, 1.9 GB decoded), a tiled TIFF declaring 10⁶ x 10⁶ px
    (0.5 MB: every tile empty), and a small label image."""
    folder = tmp_path_factory.mktemp("bombs")
    side = 25000
    tifffile.imwrite(folder / "strip.tif", iter([_zlib_zeros(side * side * 3, side * 3 * 100)]), shape=(side, side, 3),
                     dtype=np.uint8, photometric="rgb", compression="zlib", rowsperstrip=side)
    side, tile = 10**6, 4096
    tifffile.imwrite(folder / "declared.tif", (b"" for _ in range((-(-side // tile)) ** 2)), shape=(side, side, 3),
                     dtype=np.uint8, photometric="rgb", tile=(tile, tile), compression="zlib")
    tifffile.imwrite(folder / "labels.tif", blob_image((100, 120), n=5)[1].astype(np.uint16))
    return folder


def test_nucseg_info_refuses_a_single_strip_bomb_without_decoding_it(bombs):
    """It decoded 1.9 GB in 52 s; under a 2 GiB cap that is a MemoryError."""
    done = cli_capped(["info", str(bombs / "strip.tif")], cap_gb=2)
    line = _one_error_line(done.stderr, "info")
    assert done.returncode == 2 and "strip.tif" in line and "strips of 25000 x 25000 px" in line
    assert "tiled TIFF" in line


def test_nucseg_info_refuses_a_file_declaring_a_trillion_pixels(bombs):
    done = cli_capped(["info", str(bombs / "declared.tif")], cap_gb=2)
    line = _one_error_line(done.stderr, "info")
    assert done.returncode == 2 and "declared.tif" in line and "1000000 x 1000000 px" in line


def test_evaluate_compares_the_probability_map_s_shape_before_decoding_it(bombs):
    """--prob raised MemoryError before comparing shapes."""
    labels = str(bombs / "labels.tif")
    done = cli_capped(["evaluate", "--truth", labels, "--pred", labels, "--prob", str(bombs / "strip.tif")], cap_gb=2)
    line = _one_error_line(done.stderr, "evaluate")
    assert done.returncode == 2 and "strip.tif" in line and "(25000, 25000)" in line and "(100, 120)" in line


def test_evaluate_refuses_label_images_too_large_to_read_whole(bombs):
    done = cli_capped(["evaluate", "--truth", str(bombs / "strip.tif"), "--pred", str(bombs / "labels.tif")], cap_gb=2)
    line = _one_error_line(done.stderr, "evaluate")
    assert done.returncode == 2 and "strip.tif" in line and "too large to read whole" in line


@pytest.mark.parametrize("name, said", [("declared.tif", "1000000 x 1000000 px"), ("strip.tif", "strips of 25000")])
def test_the_napari_reader_refuses_a_bomb_in_one_line(bombs, name, said):
    """The reader used 5.2 GB on a file declaring 10⁶ x 10⁶ px, then raised a raw MemoryError (napari itself is not
    needed: the reader function is plain Python)."""
    code = f"""
from nucseg._napari.reader import read_slides
from nucseg.errors import SlideReadError
try:
    read_slides({str(bombs / name)!r})
except SlideReadError as err:
    print("refused:", err)
"""
    done = run_capped(code, cap_gb=2)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = done.stdout.splitlines()
    assert line.startswith(f"refused: cannot read {bombs / name}") and said in line


def test_a_bomb_among_a_slide_s_associated_images_is_left_out(tmp_path):
    side = 25000
    path = tmp_path / "slide.tif"
    image, _ = blob_image((600, 700), n=20)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, photometric="rgb", tile=(256, 256), compression="zlib")
        tif.write(iter([_zlib_zeros(side * side * 3, side * 3 * 100)]), shape=(side, side, 3), dtype=np.uint8,
                  photometric="rgb", compression="zlib", rowsperstrip=side)
    code = f"""
from nucseg.io.slides import open_slide
with open_slide({str(path)!r}) as slide:
    print(slide.shape, sorted(slide.associated), slide.metadata.get("skipped_associated"))
"""
    done = run_capped(code, cap_gb=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("(600, 700) [] {") and "25000 x 25000 px, too large to read whole" in done.stdout


# ------------------------------------------------------------------- 12: pixels that are not square are refused


def _anisotropic(tmp_path, how: str, x: float = 0.5, y: float = 0.25):
    from PIL import Image

    image, truth = blob_image((160, 200), n=8, seed=4)
    if how == "ome":
        path = tmp_path / "aniso.ome.tif"
        tifffile.imwrite(path, image, photometric="rgb", ome=True,
                         metadata={"axes": "YXS", "PhysicalSizeX": x, "PhysicalSizeY": y})
    elif how == "resolution":
        path = tmp_path / "aniso.tif"
        tifffile.imwrite(path, image, photometric="rgb", resolution=(1e4 / x, 1e4 / y), resolutionunit="CENTIMETER")
    else:
        path = tmp_path / "aniso.png"
        Image.fromarray(image).save(path, dpi=(25400 / x, 25400 / y))
    return path, truth


@pytest.mark.parametrize("how", ["ome", "resolution", "png"])
def test_predict_refuses_pixels_that_are_not_square(tmp_path, monkeypatch, capsys, how):
    """X 0.5 and Y 0.25 µm/px were taken as 0.5 square: area_um2 came out twice the truth, and nothing warned."""
    install_blobnet(monkeypatch)
    path, _ = _anisotropic(tmp_path, how)
    out = tmp_path / "o"
    assert main(["predict", str(path), "--out", str(out), *MODEL, "--format", "csv"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert path.name in line and "not square (0.5 µm wide, 0.25 µm high)" in line
    assert "vips resize IN OUT 2 --vscale 1" in line
    assert not list(out.glob("*_nuclei.csv"))
    # --mpp does not make them square either
    assert main(["predict", str(path), "--out", str(out), *MODEL, "--format", "csv", "--mpp", "0.25"]) == 2
    assert "not square" in _one_error_line(capsys.readouterr().err)


def test_square_pixels_within_two_percent_are_one_size(tmp_path, monkeypatch, capsys):
    from nucseg.io.slides import open_slide

    install_blobnet(monkeypatch)
    path, truth = _anisotropic(tmp_path, "ome", 0.2500, 0.2510)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.2505) and slide.mpp_xy == (0.25, 0.251)
    assert main(["predict", str(path), "--out", str(tmp_path / "o"), *MODEL, "--format", "csv"]) == 0
    rows = (tmp_path / "o" / "aniso_nuclei.csv").read_text().strip().splitlines()
    assert len(rows) == truth.max() + 1 and "area_um2" in rows[0]
    capsys.readouterr()


def test_info_and_the_napari_reader_show_both_sizes(tmp_path, capsys):
    from nucseg._napari.reader import read_slides
    from nucseg.io._openslide import _mpp

    path, _ = _anisotropic(tmp_path, "ome")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "microns/pixel  not square: 0.5 wide, 0.25 high" in out
    [(data, kwargs, kind)] = read_slides(str(path))
    assert kind == "image" and kwargs["scale"] == (0.25, 0.5) and kwargs["metadata"]["mpp"] is None
    assert kwargs["metadata"]["mpp_xy"] == [0.5, 0.25]
    assert _mpp({"openslide.mpp-x": "0.5", "openslide.mpp-y": "0.25"}) == (None, (0.5, 0.25))
    assert _mpp({"openslide.mpp-x": "0.2527", "openslide.mpp-y": "0.2526"})[0] == pytest.approx(0.25265)


# ------------------------------------------------------------------------ 5: --scheduler, a bounded handshake


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word; it stops itself after `life`
    seconds (or on exit from the with block)."""

    def __init__(self, life: float = 300.0):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.conns: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(life,), daemon=True)
        self.thread.start()

    def _serve(self, life: float) -> None:
        import time

        end = time.monotonic() + life
        while not self.stop.is_set() and time.monotonic() < end:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                continue
        for conn in self.conns:
            conn.close()
        self.sock.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)


def test_a_scheduler_that_accepts_but_says_nothing_ends_in_one_line(tmp_path, monkeypatch):
    """It hung past 600 s: the Client's 30 s covered only the TCP connect. Now the whole handshake is bounded by
    Dask's connect timeout (3 s here)."""
    from PIL import Image

    Image.fromarray(blob_image((64, 64), n=2)[0]).save(tmp_path / "t.png")
    monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "3s")
    with SilentServer() as server:
        done = cli_capped(["predict", str(tmp_path / "t.png"), "--out", str(tmp_path / "o"), *MODEL,
                           "--scheduler", f"tcp://127.0.0.1:{server.port}"], timeout=180)
        assert server.conns  # it was reached
    line = _one_error_line(done.stderr)
    assert done.returncode == 2 and f"127.0.0.1:{server.port} did not answer within 3 s" in line
    assert not (tmp_path / "o" / "t_labels.tif").exists()


def test_a_scheduler_address_that_is_not_one_is_refused_at_once(tmp_path):
    """It gave a traceback after 61 s."""
    from PIL import Image

    Image.fromarray(blob_image((64, 64), n=2)[0]).save(tmp_path / "t.png")
    done = cli_capped(["predict", str(tmp_path / "t.png"), "--out", str(tmp_path / "o"), *MODEL,
                       "--scheduler", "not-an-address"], timeout=180)
    line = _one_error_line(done.stderr)
    assert done.returncode == 2 and "'not-an-address' is not a Dask scheduler address" in line
    assert "tcp://10.0.0.5:8786" in line
