"""Batches in-process: unique stems, resume, atomic outputs, the summary CSV (nucseg.jobs.batch)."""

import csv
import json
from pathlib import Path

import pytest
import tifffile
from PIL import Image

from fake_models import blob_image, install_blobnet
from nucseg.cli import main
from nucseg.errors import StoreError
from nucseg.jobs.batch import plain_stem, unique_stems

MODEL = ["--model", "unet-efficientnet-b0", "--quiet"]


@pytest.mark.parametrize("name, stem", [("a.1.png", "a.1"), ("x.ome.tif", "x"), ("X.OME.TIFF", "X"),
                                        ("slide.svs", "slide"), ("v2.0_scan.tiff", "v2.0_scan"), (".png", ".png"),
                                        ("notes.txt", "notes.txt")])
def test_plain_stem_strips_only_image_suffixes(name, stem):
    assert plain_stem(Path(name)) == stem


def test_unique_stems_for_any_names():
    paths = [Path(p) for p in ["/d/x/a.png", "/d/y/a.png", "/d/z/b.png", "/d/z/b.tif", "/d/c.png", "/d/C.tif",
                               "/d/p/q/e.png", "/d/r/q/e.png", "/d/q_e.png"]]
    stems = [s for s, _ in unique_stems(paths)]
    assert stems[:6] == ["x_a", "y_a", "b_png", "b_tif", "c_png", "C_tif"]
    assert stems[6:8] == ["p_q_e", "r_q_e"]  # q_e is taken by the last input
    assert stems[8] == "q_e"
    assert len({s.lower() for s in stems}) == len(stems)
    # the same inputs give the same names, in any order and with other inputs beside them
    assert dict(zip(paths, stems))[paths[0]] == unique_stems([Path("/d/k.png"), paths[1], paths[0]])[2][0]
    notes = [n for _, n in unique_stems(paths)]
    assert notes[8] is None and "share the name 'a'" in notes[0]


def test_unique_stems_fall_back_to_a_hash():
    paths = [Path("/d/a.png"), Path("/d/a.PNG")]  # the same name on a case-insensitive file system
    stems = [s for s, _ in unique_stems(paths)]
    assert stems[0] != stems[1] and all(s.startswith("a") for s in stems)


@pytest.fixture
def tiles(tmp_path, monkeypatch):
    install_blobnet(monkeypatch)
    folder = tmp_path / "tiles"
    folder.mkdir()
    counts = {}
    for i, n in enumerate([4, 6, 8]):
        Image.fromarray(blob_image((110, 130), n=n, seed=i)[0]).save(folder / f"t{i}.png")
        counts[f"t{i}"] = n
    return folder, counts


def _summary(out):
    with open(out / "batch_summary.csv", newline="") as fh:
        return {Path(r["input"]).name: r for r in csv.DictReader(fh)}


def test_resume_skips_finished_inputs_and_redoes_unfinished_ones(tiles, tmp_path, capsys):
    folder, counts = tiles
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out), *MODEL]) == 0
    rows = _summary(out)
    assert {r["status"] for r in rows.values()} == {"done"} and rows["t1.png"]["nuclei"] == "6"
    assert rows["t0.png"]["worker"] == "in-process"
    # an interrupted run: t1's JSON never written (it is renamed in last), a temporary file left behind
    (out / "t1_predict.json").unlink()
    (out / ".t1_labels.tif.0123abcd.partial").write_bytes(b"half")
    (out / "..t1_labels.tif.0123abcd.partial.4567cdef.tmp").write_bytes(b"half")  # the TIFF writer's own
    stamp = (out / "t0_labels.tif").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["predict", str(folder), "--out", str(out), *MODEL]) == 2  # without --resume: refused
    assert "--resume" in capsys.readouterr().err
    assert main(["predict", str(folder), "--out", str(out), *MODEL, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 of 3 inputs" in err and "1 unfinished outputs will be replaced" in err
    assert (out / "t0_labels.tif").stat().st_mtime_ns == stamp  # not redone
    assert json.loads((out / "t1_predict.json").read_text())["nuclei"] == 6
    assert not list(out.glob(".*"))  # no temporary files left
    rows = _summary(out)
    assert rows["t0.png"]["status"] == "skipped" and rows["t1.png"]["status"] == "done"
    assert rows["t0.png"]["nuclei"] == "4"


def test_resume_with_other_settings_refuses_then_overwrite_redoes(tiles, tmp_path, capsys):
    folder, _ = tiles
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out), *MODEL]) == 0
    capsys.readouterr()
    assert main(["predict", str(folder), "--out", str(out), *MODEL, "--resume", "--tile-size", "64",
                 "--overlap", "16"]) == 2
    assert "do not match this run" in capsys.readouterr().err
    assert main(["predict", str(folder), "--out", str(out), *MODEL, "--resume", "--tile-size", "64",
                 "--overlap", "16", "--overwrite"]) == 0
    assert json.loads((out / "t2_predict.json").read_text())["config"]["tiling"]["tile_size"] == 64
    # a format not written before: the earlier result is not complete for this request
    assert main(["predict", str(folder), "--out", str(out), *MODEL, "--resume", "--tile-size", "64",
                 "--overlap", "16", "--format", "tif,csv"]) == 2


def test_a_failing_input_is_summarised_and_the_others_finish(tiles, tmp_path, shared_data, capsys):
    folder, counts = tiles
    broken = shared_data / "slides" / "broken" / "unopenable.tiff"
    out = tmp_path / "out"
    assert main(["predict", str(folder / "t0.png"), str(broken), str(folder / "t2.png"), "--out", str(out),
                 *MODEL]) == 2
    err = capsys.readouterr().err
    assert "unopenable.tiff" in err and "1 of 3 inputs failed" in err and "Traceback" not in err
    rows = _summary(out)
    assert [r["status"] for r in rows.values()] == ["done", "failed", "done"]
    assert "unopenable.tiff" in rows["unopenable.tiff"]["error"] and rows["unopenable.tiff"]["nuclei"] == ""
    assert tifffile.imread(out / "t2_labels.tif").max() == counts["t2"]
    assert not (out / "unopenable_predict.json").exists()


def test_plan_refuses_existing_outputs_before_running_anything(tiles, tmp_path):
    from nucseg.config import InferenceConfig
    from nucseg.jobs.batch import BatchSettings, plan_batch

    folder, _ = tiles
    out = tmp_path / "out"
    out.mkdir()
    (out / "t2_nuclei.csv").write_text("mine")  # not even a format asked for: still never written over
    settings = BatchSettings(InferenceConfig(model="unet-efficientnet-b0"))
    with pytest.raises(StoreError, match="t2_nuclei.csv already exists"):
        plan_batch(sorted(folder.iterdir()), out, settings)
    plan = plan_batch(sorted(folder.iterdir()), out, settings, overwrite=True)
    assert [i.replace for i in plan.todo] == [True, True, True]  # --overwrite: whatever is there by then
    assert (out / "t2_nuclei.csv").read_text() == "mine"  # planning touches nothing


def test_ctrl_c_in_process_keeps_finished_inputs_and_resume_does_the_rest(tiles, tmp_path, monkeypatch, capsys):
    from nucseg.io import export

    folder, counts = tiles
    out = tmp_path / "out"
    real = export.write_labels_ome_tiff
    calls = []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(export, "write_labels_ome_tiff", interrupted_on_the_second)
    assert main(["predict", str(folder), "--out", str(out), *MODEL]) == 130
    assert "--resume" in capsys.readouterr().err
    assert [r["status"] for r in _summary(out).values()] == ["done", "not run", "not run"]
    assert sorted(p.name for p in out.iterdir()) == ["batch_summary.csv", "t0_labels.tif", "t0_predict.json"]
    monkeypatch.setattr(export, "write_labels_ome_tiff", real)
    assert main(["predict", str(folder), "--out", str(out), *MODEL, "--resume"]) == 0
    assert "skipped 1 of 3 inputs" in capsys.readouterr().err
    assert [r["status"] for r in _summary(out).values()] == ["skipped", "done", "done"]
    assert tifffile.imread(out / "t2_labels.tif").max() == counts["t2"]
