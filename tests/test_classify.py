"""The nucleus classifier's core: features, deterministic training, versions saved as examples, application block by
block and through the exports (synthetic nuclei of two kinds, tests/classify_data.py)."""

import csv
import json

import numpy as np
import pytest

from classify_data import centres, two_kinds
from nucseg.classify.apply import ClassAnnotator, iter_classify
from nucseg.classify.classes import DEFAULT_CLASSES
from nucseg.classify.examples import Point, examples_from_labels, read_points_csv
from nucseg.classify.features import block_features, feature_names
from nucseg.classify.learner import ClassifierData, ClassifierSettings, train
from nucseg.classify.store import (
    list_classifiers,
    load_classifier,
    load_trained,
    resolve_classifier,
    save_classifier,
)
from nucseg.errors import InvalidInputError, StoreError
from nucseg.io.export import write_nuclei_tables
from nucseg.io.label_blocks import iter_label_blocks


def _drive(gen):
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def _data(seed=0, per_class=6):
    img, labels, kinds = two_kinds(seed=seed)
    where = centres(labels)
    points = []
    for kind in ("lymphocyte", "tumour"):
        ids = [i for i, k in kinds.items() if k == kind][:per_class]
        points += [Point("a.png", *where[i], kind) for i in ids]
    settings = ClassifierSettings()
    examples, features, skipped = examples_from_labels(labels, lambda y0, y1, x0, x1: img[y0:y1, x0:x1], points,
                                                       0.25, settings.groups, image_name="a.png")
    assert not skipped
    return ClassifierData(list(DEFAULT_CLASSES), settings, {"name": "m", "sha256": "abc"}, examples, features)


def test_features_are_finite_and_scale_with_the_pixel_size():
    img, labels, kinds = two_kinds(seed=1)
    block = next(iter_label_blocks(labels))
    f1, f2 = block_features(block, img, 0.25), block_features(block, img, 0.5)
    names = feature_names()
    assert f1.shape == (len(kinds), len(names)) and np.isfinite(f1).all()
    area = names.index("area_um2")
    np.testing.assert_allclose(f2[:, area], 4 * f1[:, area])
    lymph = np.array([kinds[int(i)] == "lymphocyte" for i in block.ids])
    assert f1[lymph, area].max() < f1[~lymph, area].min()  # the small kind is small
    h = names.index("h_mean")
    assert f1[lymph, h].mean() > f1[~lymph, h].mean()  # and darker in haematoxylin


def test_features_of_selected_nuclei_are_their_rows_of_the_whole_block():
    img, labels, _ = two_kinds(seed=6)
    block = next(iter_label_blocks(labels))
    select = np.array([0, 3, 7, len(block.ids) - 1])
    np.testing.assert_allclose(block_features(block, img, 0.25, select=select),
                               block_features(block, img, 0.25)[select], rtol=1e-12)


def test_a_classifier_learns_the_two_kinds_on_another_image():
    trained = train(_data(seed=0))
    img, labels, kinds = two_kinds(seed=5)
    result = _drive(iter_classify(labels, img, trained, 0.25, chunk=128))
    truth = np.array([kinds[int(i)] for i in result.ids])
    assert len(result) == len(kinds) and (result.names == truth).mean() >= 0.95
    assert set(result.counts()) == {"lymphocyte", "tumour"} and sum(result.counts().values()) == len(kinds)
    # centres are full-resolution, QuPath convention: on their own nucleus
    assert all(labels[int(y), int(x)] == i for i, x, y in zip(result.ids, result.x, result.y, strict=True))
    worst = result.most_uncertain(exclude=[int(result.ids[0])], k=3)
    assert len(worst) == 3 and 0 not in worst


def test_stop_ends_after_the_current_block_and_keeps_it():
    import threading

    trained = train(_data(seed=0))
    img, labels, kinds = two_kinds(seed=5)
    stop = threading.Event()
    gen = iter_classify(labels, img, trained, 0.25, chunk=128, stop=stop)
    first = next(gen)
    stop.set()
    with pytest.raises(StopIteration) as done:
        next(gen)
    result = done.value.value
    assert result.stopped and 0 < len(result) == first.nuclei < len(kinds) and first.done < first.total


def test_saved_versions_retrain_to_the_same_classifier_and_are_never_overwritten(tmp_path):
    data = _data()
    first = save_classifier(data, "kinds", root=tmp_path)
    before = (first / "examples.csv").read_bytes()
    second = save_classifier(_data(per_class=4), "kinds", root=tmp_path)
    assert (first.name, second.name) == ("v001", "v002")
    assert (first / "examples.csv").read_bytes() == before
    assert resolve_classifier("kinds", root=tmp_path) == second
    assert resolve_classifier("kinds/v001", root=tmp_path) == first
    loaded = load_classifier(first)
    np.testing.assert_array_equal(loaded.features, data.features)
    assert [e.klass for e in loaded.examples] == [e.klass for e in data.examples]
    img, labels, _ = two_kinds(seed=3)
    feats = block_features(next(iter_label_blocks(labels)), img, 0.25)
    np.testing.assert_array_equal(load_trained(first)[0].probabilities(feats), train(data).probabilities(feats))
    config = json.loads((first / "classifier.json").read_text())
    assert config["model"] == {"name": "m", "sha256": "abc"} and config["counts"]["tumour"] == 6
    assert not list(first.glob("*.pkl")) and [i.version for i in list_classifiers(tmp_path)] == ["v001", "v002"]
    with open(first / "examples.csv", "a") as fh:  # edited by hand: refused, not silently used
        fh.write("x.png,1,1,tumour,1," + ",".join(["0"] * len(loaded.feature_names)) + "\n")
    with pytest.raises(StoreError, match="sha256"):
        load_classifier(first)


def test_one_class_is_not_enough_and_names_are_checked(tmp_path):
    data = _data()
    only = ClassifierData(data.classes, data.settings, data.model,
                          [e for e in data.examples if e.klass == "tumour"],
                          data.features[[e.klass == "tumour" for e in data.examples]])
    with pytest.raises(InvalidInputError, match="at least two classes"):
        train(only)
    with pytest.raises(InvalidInputError, match="classifier name"):
        save_classifier(data, "../escape", root=tmp_path)
    with pytest.raises(InvalidInputError, match="no classifier 'nope'"):
        resolve_classifier("nope", root=tmp_path)


def test_points_csv_errors_name_the_file_and_line(tmp_path):
    good = tmp_path / "p.csv"
    good.write_text("image,x,y,class\nimg/a.png,10,12.5,tumour\n")
    (point,) = read_points_csv(good)
    assert point.image == tmp_path / "img" / "a.png" and (point.x, point.y, point.klass) == (10, 12.5, "tumour")
    bad = tmp_path / "bad.csv"
    bad.write_text("image,x,y,class\na.png,10,12,tumour\na.png,ten,12,tumour\n")
    with pytest.raises(InvalidInputError, match="bad.csv line 3"):
        read_points_csv(bad)
    (tmp_path / "cols.csv").write_text("image,x,y\na.png,1,2\n")
    with pytest.raises(InvalidInputError, match="missing column"):
        read_points_csv(tmp_path / "cols.csv")


def test_points_on_background_are_skipped_and_reported():
    img, labels, _ = two_kinds(seed=2)
    x, y = next(iter(centres(labels).values()))
    examples, features, skipped = examples_from_labels(
        labels, lambda y0, y1, x0, x1: img[y0:y1, x0:x1],
        [Point("a", x, y, "tumour"), Point("a", 0.5, 0.5, "tumour"), Point("a", 9999, 1, "tumour")], 0.25,
        ClassifierSettings().groups)
    assert len(examples) == 1 and features.shape[0] == 1
    assert [s.reason.split(" ")[0] for s in skipped] == ["on", "outside"]


def test_exports_carry_each_nucleus_class(tmp_path):
    trained = train(_data())
    img, labels, kinds = two_kinds(seed=4)
    annotate = ClassAnnotator(trained, 0.25)
    write_nuclei_tables(labels, csv_path=tmp_path / "n.csv", geojson_path=tmp_path / "n.geojson", image=img,
                        mpp=0.25, annotate=annotate)
    with open(tmp_path / "n.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[-3:] == ["class", "class_probability", "mpp"]
    assert np.mean([r["class"] == kinds[int(r["id"])] for r in rows]) >= 0.95
    assert all(0.5 <= float(r["class_probability"]) <= 1 for r in rows)
    features = json.loads((tmp_path / "n.geojson").read_text())["features"]
    colours = {c.name: list(c.color) for c in DEFAULT_CLASSES}
    for feature, row in zip(features, rows, strict=True):
        props = feature["properties"]
        assert props["classification"] == {"name": row["class"], "color": colours[row["class"]]}
        assert props["measurements"]["class_probability"] == pytest.approx(float(row["class_probability"]))
    summary = annotate.summary(area_mm2=0.5)
    assert sum(summary["counts"].values()) == len(kinds) == len(rows)
    assert summary["per_mm2"]["tumour"] == pytest.approx(summary["counts"]["tumour"] / 0.5)
    with pytest.raises(InvalidInputError, match="needs the image"):
        write_nuclei_tables(labels, csv_path=tmp_path / "m.csv", annotate=annotate)


@pytest.mark.shared_data
def test_the_benchmark_labels_are_a_points_csv_on_nuclei(shared_data, repo_root):
    """benchmarks/data/classes.csv reads as `nucseg classify train --points` reads it, and every point lies on its
    nucleus of the tile's truth labels."""
    from PIL import Image

    points = read_points_csv(repo_root / "benchmarks" / "data" / "classes.csv")
    assert {p.klass for p in points} == {"tumour", "lymphocyte", "stroma"} and len(points) > 300
    with open(repo_root / "benchmarks" / "data" / "classes.csv", newline="") as fh:
        ids = [int(r["nucleus_id"]) for r in csv.DictReader(fh)]
    tiles: dict = {}
    for p, nid in zip(points, ids, strict=True):
        assert p.image.is_file(), p.image
        if p.image not in tiles:
            tiles[p.image] = np.asarray(Image.open(p.image.parent.parent / "labels" / p.image.name))
        assert tiles[p.image][int(p.y), int(p.x)] == nid
