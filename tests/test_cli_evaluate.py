"""`nucseg evaluate`: files and folders, JSON and table output, CSV, errors as one line with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucseg.cli import main
from nucseg.metrics.report import evaluate_labels

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "monuseg-train"
JSON_KEYS = {"dice", "iou", "precision", "recall", "accuracy", "f1", "aji", "pq", "tp", "fp", "fn"}


def scene():
    truth = np.zeros((40, 50), np.uint16)
    pred = np.zeros((40, 50), np.uint32)
    truth[2:12, 3:13] = 1
    truth[20:30, 20:30] = 300
    pred[2:12, 4:14] = 5  # IoU 90 / 110
    pred[32:36, 40:44] = 6  # FP
    return truth, pred


@pytest.fixture
def files(tmp_path):
    truth, pred = scene()
    Image.fromarray(truth).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a_labels.tif", pred)
    prob = (pred > 0).astype(np.float32)[None].repeat(3, axis=0)  # (C, H, W) as predict writes
    tifffile.imwrite(tmp_path / "a_prob.tif", prob, photometric="minisblack")
    return tmp_path / "a.png", tmp_path / "a_labels.tif", tmp_path / "a_prob.tif"


def test_json_single_pair(files, capsys):
    truth, pred, prob = files
    assert main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert JSON_KEYS <= set(out) and "auc" not in out
    expected = evaluate_labels(*scene())
    for key in JSON_KEYS:
        assert out[key] == pytest.approx(expected[key])
    assert (out["tp"], out["fp"], out["fn"]) == (1, 1, 1)


def test_prob_gives_auc_and_table_output(files, capsys):
    truth, pred, prob = files
    assert main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--prob", str(prob), "--json"]) == 0
    assert 0.5 < json.loads(capsys.readouterr().out)["auc"] <= 1.0
    assert main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--iou", "0.3"]) == 0
    text = capsys.readouterr().out
    for word in ("dice", "aji", "pq", "object_precision", "IoU >= 0.3"):
        assert word in text


def test_folders_pair_by_name_with_csv(tmp_path, capsys):
    truth, pred = scene()
    (tmp_path / "gt").mkdir()
    (tmp_path / "pr").mkdir()
    for name in ("x", "y"):
        Image.fromarray(truth).save(tmp_path / "gt" / f"{name}.png")
        tifffile.imwrite(tmp_path / "pr" / f"{name}_labels.tif", pred if name == "x" else truth)
    tifffile.imwrite(tmp_path / "pr" / "orphan_labels.tif", pred)
    csv_path = tmp_path / "m.csv"
    argv = ["evaluate", "--truth", str(tmp_path / "gt"), "--pred", str(tmp_path / "pr"), "--csv", str(csv_path)]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "orphan" in captured.err
    assert [r["image"] for r in out["images"]] == ["x", "y"]
    assert out["n_images"] == 2 and out["tp"] == 3 and out["pooled"]["f1"] == pytest.approx(6 / (6 + 1 + 1))
    assert JSON_KEYS <= set(out)
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("image,dice,iou") and len(lines) == 3
    assert main(argv) == 2  # the CSV exists now
    assert "m.csv" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    table = capsys.readouterr().out
    assert "MEAN" in table and "POOLED" in table


@pytest.mark.parametrize("case", ["missing", "shape", "mixed", "iou"])
def test_bad_input_exits_2_with_one_line(files, tmp_path, capsys, case):
    truth, pred, _ = files
    if case == "missing":
        argv = ["--truth", str(tmp_path / "nope.png"), "--pred", str(pred)]
    elif case == "shape":
        tifffile.imwrite(tmp_path / "small.tif", np.zeros((5, 5), np.uint16))
        argv = ["--truth", str(truth), "--pred", str(tmp_path / "small.tif")]
    elif case == "mixed":
        argv = ["--truth", str(tmp_path), "--pred", str(pred)]
    else:
        argv = ["--truth", str(truth), "--pred", str(pred), "--iou", "1.5"]
    assert main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nucseg evaluate: error:") and "\n" not in err and "Traceback" not in err


def test_console_script_json(files):
    truth, pred, _ = files
    exe = Path(sys.executable).parent / "nucseg"
    result = subprocess.run([str(exe), "evaluate", "--truth", str(truth), "--pred", str(pred), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert JSON_KEYS <= set(out) and out["tp"] == 1


def monuseg_label():
    if not SHARED.is_dir():
        pytest.skip(f"shared MoNuSeg data not found at {SHARED} (../shared/data is absent on this machine)")
    return sorted((SHARED / "labels").glob("*.png"))[0]


@pytest.mark.shared_data
def test_monuseg_label_against_itself_and_eroded(tmp_path, capsys):
    from skimage.segmentation import find_boundaries

    path = monuseg_label()
    assert main(["evaluate", "--truth", str(path), "--pred", str(path), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    for key in ("dice", "iou", "precision", "recall", "accuracy", "f1", "aji", "pq"):
        assert same[key] == 1.0, key
    assert same["fp"] == 0 and same["fn"] == 0 and same["tp"] > 100
    labels = np.asarray(Image.open(path))
    eroded = np.where(find_boundaries(labels, mode="inner"), 0, labels).astype(np.uint16)  # 1 px off each nucleus
    tifffile.imwrite(tmp_path / "eroded.tif", eroded)
    assert main(["evaluate", "--truth", str(path), "--pred", str(tmp_path / "eroded.tif"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == 1.0 and 0.6 < out["recall"] < 0.98
    assert 0.7 < out["dice"] < 0.99 and 0.6 < out["aji"] < 0.95
    assert out["f1"] > 0.85 and 0.55 < out["pq"] < 0.95
