"""Rules with one home: whether a run streams to disk, the pyramid level a run reads, a layer's pixel size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from nucseg.config import InferenceConfig


def test_the_batch_and_the_widget_agree_when_a_run_streams_to_disk(tmp_path):
    """A 1500 px square 20x PNG is 3000 px square at the model's 40x: more than one 2048 px block. The widget's rule
    streamed it; the batch's counted level-0 pixels and kept it in memory."""
    from nucseg.inference.plan import streams_to_disk
    from nucseg.io.slides import open_slide
    from nucseg.jobs.predict_file import BatchSettings, input_units, is_big

    path = tmp_path / "tile20x.png"
    Image.fromarray(np.full((1500, 1500, 3), 230, np.uint8)).save(path, dpi=(25400 / 0.5, 25400 / 0.5))
    settings = BatchSettings(InferenceConfig())
    with open_slide(path) as slide:
        mpp, _ = input_units(slide, settings)
        assert abs(mpp - 0.5) < 1e-3
        widget = streams_to_disk(slide.shape, False, mpp, None, settings.config.block_size, 0.25)
        assert widget and is_big(slide, settings, mpp) == widget
        assert not is_big(slide, BatchSettings(InferenceConfig(), region=(0, 0, 1000, 1000)), mpp)


def test_one_pyramid_level_rule():
    """Slides, napari layers and the engine pick the same level (5 % slack; the layers' copy had 1 %)."""
    from nucseg.inference.source import ArraySource, best_level
    from nucseg.io.base import best_level as rule

    downsamples = [1.0, 4.0, 16.0]
    for target in (0.25, 0.49, 0.97, 1.0, 1.05, 3.9, 4.2, 0.1):
        want = rule(downsamples, 0.25, target)
        source = ArraySource(np.zeros((8, 8, 3), np.uint8), mpp=0.25)
        source.downsamples = downsamples
        assert best_level(source, target) == want
    assert rule(downsamples, 0.25, 0.97) == 1 and rule(downsamples, None, 4.0) == 0




def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """Writes go through `atomic_output`: the hand-written temp-then-rename copies left their temporary behind
    when the writing failed."""
    import pytest

    from nucseg.jobs.evaluate import ErrorObject, errors_to_csv

    path = tmp_path / "errors.csv"
    path.write_text("earlier\n")

    def rows():
        yield ErrorObject("FP", 1, (), (1.0, 2.0), (0, 0, 2, 2), 4)
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        errors_to_csv(rows(), path, overwrite=True)
    assert path.read_text() == "earlier\n" and [p.name for p in tmp_path.iterdir()] == ["errors.csv"]


def test_results_exports_and_the_viewer_build_pyramids_by_one_rule(tmp_path):
    import zarr

    from nucseg.inference.result_store import create_result_store, is_result_store, zarr_pyramid
    from nucseg.io.export import write_labels_zarr
    from nucseg.io.ngff import read_labels_ngff

    labels = np.arange(300 * 500, dtype=np.uint32).reshape(300, 500)
    store, _ = create_result_store(tmp_path / "run.zarr", labels.shape, (10, 10))
    store[...] = labels
    assert is_result_store(tmp_path / "run.zarr") and not is_result_store(tmp_path)
    shown = zarr_pyramid(store, 128)
    write_labels_zarr(labels, tmp_path / "out.zarr", chunks=128)
    exported, _ = read_labels_ngff(tmp_path / "out.zarr")
    assert [lv.shape for lv in shown] == [lv.shape for lv in exported] == [(300, 500), (150, 250), (75, 125)]
    for a, b, step in zip(shown, exported, (1, 2, 4)):
        np.testing.assert_array_equal(np.asarray(a[...]), labels[::step, ::step])
        np.testing.assert_array_equal(np.asarray(b[...]), labels[::step, ::step])
    assert zarr.open_group(str(tmp_path / "run.zarr"), mode="r")["pyramid"]["labels-2"].attrs["complete"]


def test_nucseg_predict_takes_tiles_bigger_than_the_default_block():
    """The Segment widget raised the block to the tile; `nucseg predict --tile-size 4096` was refused instead
    ("block size 2048 must be at least the tile size 4096")."""
    from nucseg.cli import build_parser
    from nucseg.cli.predict import build_config

    args = build_parser().parse_args(["predict", "x.png", "--out", "o", "--tile-size", "4096"])
    assert build_config(args).block_size == 4096


def test_the_block_side_when_none_is_chosen_is_one_rule():
    from nucseg.cli import build_parser
    from nucseg.cli.predict import build_config
    from nucseg.config import default_block_size

    args = build_parser().parse_args(["predict", "x.png", "--out", "o", "--tile-size", "4096"])
    assert build_config(args).block_size == default_block_size(4096) == 4096
    args = build_parser().parse_args(["predict", "x.png", "--out", "o", "--block-size", "1024", "--tile-size", "512"])
    assert build_config(args).block_size == 1024 and default_block_size(512) == 2048


def test_where_a_widget_run_goes_is_decided_in_the_core(tmp_path, monkeypatch):
    from nucseg.jobs.segment import prediction_outputs, predictions_dir

    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path))
    config = InferenceConfig()
    small, big = prediction_outputs("/data/tile.ome.tif", (1500, 1500), False, 0.5, [(0, 0, 500, 500), None], config,
                                    0.25)
    assert small is None and big.parent == predictions_dir() and big.parent.is_dir()
    assert big.name.startswith("tile-") and big.name.endswith("-r2.zarr")  # the one stem rule: not "tile.ome"


def test_fine_tuning_refuses_before_any_work_by_one_rule(tmp_path):
    import pytest

    from nucseg.config import FinetuneConfig
    from nucseg.errors import InvalidInputError
    from nucseg.jobs.finetune import require_original_data, require_reviewed
    from nucseg.training.corrections.store import CorrectionStore

    with pytest.raises(InvalidInputError, match="carries no replay set: give it"):
        require_original_data(FinetuneConfig(base_model="unet-efficientnet-b0", mix_original=0.5), False, "give it")
    require_original_data(FinetuneConfig(base_model="unet-efficientnet-b0", mix_original=0.5), True, "given")
    require_original_data(FinetuneConfig(base_model="unet-efficientnet-b0", mix_original=0.0), False, "off")
    with pytest.raises(InvalidInputError, match="store is empty"):
        require_reviewed(CorrectionStore(tmp_path / "store"))
