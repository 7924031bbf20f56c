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


