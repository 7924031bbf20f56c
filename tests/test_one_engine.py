"""One engine: an image gives the same labels as an array and through the CLI (as a slide); results claim a pixel
size only when the file or the caller gave one; images without stained tissue are still segmented."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fake_models import blob_image, install_blobnet
from nucseg.config import InferenceConfig, TilingConfig
from nucseg.inference.predict import predict
from nucseg.inference.source import ArraySource, RegionSource
from nucseg.io.slides import open_slide

BLOBS = "unet-efficientnet-b0"  # with BlobNet installed


@pytest.mark.slow  # two runs of the shipped model: ~15 s on an idle 2-core machine
def test_a_png_gives_the_same_labels_as_an_array_and_through_the_cli(shared_data, tmp_path):
    """The widget passes an array, the CLI opens the file as a slide: the same labels (with the shipped model,
    whose squeeze-excitation gates make the calibration window matter)."""
    import tifffile

    from nucseg.cli import main
    from nucseg.models.registry import DEFAULT_MODEL, resolve_model, shipped_models

    if DEFAULT_MODEL not in shipped_models():
        pytest.skip("no default model shipped")
    tile = np.asarray(Image.open(sorted((shared_data / "monuseg-train" / "images").glob("*.png"))[3]).convert("RGB"))
    crop = np.ascontiguousarray(tile[:544, 100:644])  # bigger than the 512-px calibration window
    path = tmp_path / "crop.png"
    Image.fromarray(crop).save(path)
    assert main(["predict", str(path), "--out", str(tmp_path / "out"), "--device", "cpu", "--format", "tif",
                 "--tile-size", "544", "--overlap", "0", "--quiet"]) == 0
    from_cli = tifffile.imread(tmp_path / "out" / "crop_labels.tif")
    from nucseg.config import PostprocessConfig

    config = InferenceConfig(device="cpu", tiling=TilingConfig(544, 0, 4),
                             postprocess=PostprocessConfig(**resolve_model(DEFAULT_MODEL).postprocess_defaults))
    from_array = predict(crop, config)
    assert from_array.n_nuclei > 100
    np.testing.assert_array_equal(from_array.labels, from_cli)


def test_sources_follow_the_protocol(tmp_path):
    image, _ = blob_image((40, 50))
    Image.fromarray(image).save(tmp_path / "a.png")
    with open_slide(tmp_path / "a.png") as slide:
        assert isinstance(slide, RegionSource)
    source = ArraySource(image)
    assert isinstance(source, RegionSource) and source.shape == (40, 50) and source.mpp is None
    out = source.read_region(0, -5, 45, 10, 10)
    assert out.shape == (10, 10, 3) and out[:5].min() == 255 and out[:, 5:].min() == 255
    np.testing.assert_array_equal(out[5:, :5], image[:5, 45:])


def test_pixel_size_is_claimed_only_when_given(monkeypatch, tmp_path):
    install_blobnet(monkeypatch)
    image, _ = blob_image((120, 130), n=8)
    Image.fromarray(image).save(tmp_path / "no_dpi.png")
    cfg = InferenceConfig(model=BLOBS, device="cpu", tiling=TilingConfig(64, 16, 4))
    with open_slide(tmp_path / "no_dpi.png") as slide:
        assert slide.mpp is None
        assert predict(slide, cfg).mpp is None  # was the model's 0.25, as if the file had said so
        assert predict(slide, cfg, mpp=0.25).mpp == 0.25  # the caller's value, even when it equals the model's
    assert predict(image, cfg).mpp is None
    assert predict(image, cfg, mpp=0.5).mpp == 0.5
    Image.fromarray(image).save(tmp_path / "dpi.png", dpi=(25400 / 0.3, 25400 / 0.3))
    with open_slide(tmp_path / "dpi.png") as slide:
        assert predict(slide, cfg).mpp == pytest.approx(0.3, abs=1e-4)


def test_an_image_without_stained_tissue_is_still_segmented(monkeypatch, tmp_path):
    """A grey image has no saturated (stained) pixels: the tissue mask finds nothing, and nothing is skipped."""
    install_blobnet(monkeypatch)
    image, truth = blob_image((200, 260), n=15, seed=3)
    grey = np.repeat(image.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    cfg = InferenceConfig(model=BLOBS, device="cpu", tiling=TilingConfig(64, 16, 4), block_size=128)
    with open_slide(tmp_path / "grey.png") as slide:
        res = predict(slide, cfg)
    assert res.n_nuclei == truth.max()


def test_the_engine_applies_the_models_own_thresholds(monkeypatch):
    """Thresholds left unset are the model's (its config.json "postprocess"), filled in by the engine for every
    caller; before, `predict(array)` took `PostprocessConfig`'s own defaults and only the CLI and the widget applied
    the model's."""
    import dataclasses

    from nucseg.config import FALLBACK_POSTPROCESS, PostprocessConfig
    from nucseg.models import registry

    install_blobnet(monkeypatch)
    spec = dataclasses.replace(registry.resolve_model(BLOBS), info={"postprocess": {"min_area": 400,
                                                                                     "marker_threshold": 0.3}})
    monkeypatch.setattr(registry, "resolve_model", lambda name: spec)
    image, truth = blob_image((120, 130), n=8)  # discs of 78-314 px: all under the model's min_area
    cfg = InferenceConfig(model=BLOBS, device="cpu", tiling=TilingConfig(64, 16, 4))
    res = predict(image, cfg)
    used = res.config.postprocess
    assert (used.min_area, used.marker_threshold) == (400, 0.3)
    assert used.foreground_threshold == FALLBACK_POSTPROCESS["foreground_threshold"]  # the model names none
    assert res.n_nuclei == 0
    given = predict(image, dataclasses.replace(cfg, postprocess=PostprocessConfig(min_area=20)))  # the caller's wins
    assert given.config.postprocess.min_area == 20 and given.config.postprocess.marker_threshold == 0.3
    assert given.n_nuclei == truth.max()
