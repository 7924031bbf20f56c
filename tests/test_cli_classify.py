"""`nucseg classify train | list` and `nucseg predict --classifier`, in-process and on Dask workers (BlobNet stands in
for the network: tests/fake_models.py; synthetic nuclei of two kinds: tests/classify_data.py)."""

import csv
import json
import logging

import numpy as np
import pytest
import tifffile
from PIL import Image

from classify_data import centres, two_kinds
from fake_models import install_blobnet
from nucseg.cli import main

MODEL = ["--model", "unet-efficientnet-b0"]


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _points(tmp_path, seeds=(0, 1), per_class=8, labels=True):
    """Two synthetic tiles (and their labels as `<stem>_labels.tif`), and a points CSV with relative paths, plus
    one point on background."""
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    rows = ["image,x,y,class"]
    for seed in seeds:
        img, lab, kinds = two_kinds(seed=seed)
        Image.fromarray(img).save(tmp_path / "img" / f"t{seed}.png")
        if labels:
            tifffile.imwrite(tmp_path / "lab" / f"t{seed}_labels.tif", lab)
        where = centres(lab)
        for kind in ("lymphocyte", "tumour"):
            for i in [i for i, k in kinds.items() if k == kind][:per_class]:
                rows.append(f"img/t{seed}.png,{where[i][0]:.2f},{where[i][1]:.2f},{kind}")
    rows.append("img/t0.png,1.5,1.5,tumour")
    (tmp_path / "points.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "points.csv"


def test_train_from_points_and_labels_then_list(tmp_path, home, capsys):
    points = _points(tmp_path)
    assert main(["classify", "train", "--points", str(points), "--out", "kinds", "--labels", str(tmp_path / "lab")]) == 0
    out, err = capsys.readouterr()
    assert "32 examples (tumour 16, lymphocyte 16); 1 point(s) skipped" in out
    assert "skipped point (1.5, 1.5) class tumour" in err and "on background" in err
    folder = home / "classifiers" / "kinds" / "v001"
    config = json.loads((folder / "classifier.json").read_text())
    assert config["model"]["name"] is None and config["n_examples"] == 32
    with open(folder / "examples.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["image"] for r in rows} == {str((tmp_path / "img" / f"t{s}.png").resolve()) for s in (0, 1)}
    assert main(["classify", "train", "--points", str(points), "--out", "kinds", "--labels", str(tmp_path / "lab")]) == 0
    assert main(["classify", "list"]) == 0
    listed = capsys.readouterr().out
    assert "kinds/v001" in listed and "kinds/v002" in listed and "lymphocyte 16" in listed


def test_bad_inputs_exit_2_with_one_line(tmp_path, home, capsys):
    points = _points(tmp_path, seeds=(0,))
    assert main(["classify", "train", "--points", str(points), "--out", "k", "--labels", str(tmp_path / "none")]) == 2
    assert main(["classify", "train", "--points", str(tmp_path / "missing.csv"), "--out", "k"]) == 2
    (tmp_path / "lab" / "t0_labels.tif").unlink()
    assert main(["classify", "train", "--points", str(points), "--out", "k", "--labels", str(tmp_path / "lab")]) == 2
    assert main(["predict", str(tmp_path / "img"), "--out", str(tmp_path / "o"), "--classifier", "nope"]) == 2
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if ": error: " in line]
    assert len(err) == 4 and "Traceback" not in text and all(line.startswith("nucseg ") for line in err)
    assert "t0_labels.tif" in err[2] and "no classifier 'nope'" in err[3]


def test_segmented_by_the_model_then_predict_with_classes(tmp_path, home, monkeypatch, capsys):
    install_blobnet(monkeypatch)
    points = _points(tmp_path, labels=False)
    assert main(["classify", "train", "--points", str(points), "--out", "kinds", *MODEL]) == 0
    config = json.loads((home / "classifiers" / "kinds" / "v001" / "classifier.json").read_text())
    assert config["model"]["name"] == "unet-efficientnet-b0"
    img, lab, kinds = two_kinds(seed=7)
    Image.fromarray(img).save(tmp_path / "new.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "new.png"), "--out", str(out), *MODEL, "--format", "csv,geojson",
                 "--mpp", "0.25", "--classifier", "kinds", "--quiet"]) == 0
    with open(out / "new_nuclei.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    got = [lab[int(float(r["centroid_y"])), int(float(r["centroid_x"]))] for r in rows]
    right = np.mean([r["class"] == kinds[g] for r, g in zip(rows, got, strict=True) if g])
    assert right >= 0.9, right
    features = json.loads((out / "new_nuclei.geojson").read_text())["features"]
    assert [f["properties"]["classification"]["name"] for f in features] == [r["class"] for r in rows]
    summary = json.loads((out / "new_predict.json").read_text())
    counts = summary["classes"]["counts"]
    assert sum(counts.values()) == summary["nuclei"] == len(rows)
    area = 320 * 360 * 0.25**2 / 1e6
    assert summary["classes"]["per_mm2"]["tumour"] == pytest.approx(counts["tumour"] / area, rel=1e-3)
    with open(out / "batch_summary.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert int(row["class:tumour"]) == counts["tumour"] and float(row["per_mm2:lymphocyte"]) > 0
    # bound to the model whose nuclei it learnt from
    assert main(["predict", str(tmp_path / "new.png"), "--out", str(tmp_path / "o2"), "--model",
                 "unet-mobilenet_v2", "--classifier", "kinds"]) == 2
    assert "trained on the nuclei of model unet-efficientnet-b0" in capsys.readouterr().err


def test_classes_on_dask_workers_match_in_process(tmp_path, home, monkeypatch):
    from distributed import Client, LocalCluster
    from test_distributed import BlobNetOnWorkers

    install_blobnet(monkeypatch)
    points = _points(tmp_path)
    assert main(["classify", "train", "--points", str(points), "--out", "kinds", "--labels", str(tmp_path / "lab")]) == 0
    img, _, _ = two_kinds(shape=(300, 330), n=45, seed=9)
    tifffile.imwrite(tmp_path / "slide.tif", img, photometric="rgb")
    Image.fromarray(two_kinds(seed=8)[0]).save(tmp_path / "tile.png")
    common = [str(tmp_path / "slide.tif"), str(tmp_path / "tile.png"), *MODEL, "--block-size", "128",
              "--tile-size", "64", "--overlap", "16", "--all-tiles", "--format", "csv,geojson", "--classifier",
              "kinds", "--quiet"]
    assert main(["predict", *common, "--out", str(tmp_path / "local")]) == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.register_plugin(BlobNetOnWorkers())
        assert main(["predict", *common, "--out", str(tmp_path / "dist"), "--scheduler", cluster.scheduler_address]) == 0
    for stem in ("slide", "tile"):
        local, dist = (json.loads((tmp_path / d / f"{stem}_predict.json").read_text()) for d in ("local", "dist"))
        assert dist["classes"]["counts"] == local["classes"]["counts"] and sum(local["classes"]["counts"].values())
        assert ((tmp_path / "dist" / f"{stem}_nuclei.csv").read_text()
                == (tmp_path / "local" / f"{stem}_nuclei.csv").read_text())
    assert json.loads((tmp_path / "dist" / "slide_predict.json").read_text())["blocks"] > 1
