"""One engine: `nucseg predict`, the Segment widget and `predict(array)` give the same nuclei for the same PNG.

Both run the shipped default model with the same tiling and thresholds on a 512 x 512 crop of the bundled H&E sample.
Before the one-engine change (the `engine` helper's), the CLI opened a PNG as a Slide (tissue skipping, calibration
from the most-tissue window) while the widget passed an array, so the labels differed. Until the model's thresholds
were resolved in the engine, `predict(array)` with a plain `InferenceConfig` used other minimum areas (30 / 10
against the model's 40 / 15) than the CLI and the widget, which each applied the model's themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "he_breast_monuseg.png"


def test_cli_and_widget_give_the_same_labels(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import tifffile
    from PIL import Image as PILImage

    from nucseg._napari.segment_widget import SegmentWidget
    from nucseg.cli import main
    from nucseg.metrics.matching import match_instances
    from nucseg.models.registry import DEFAULT_MODEL, shipped_models

    if DEFAULT_MODEL not in shipped_models() or not SAMPLE.is_file():
        pytest.skip("needs the shipped default model and the bundled sample")
    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path / "home"))
    crop = np.asarray(PILImage.open(SAMPLE).convert("RGB"))[:512, :512]
    png = tmp_path / "crop.png"
    PILImage.fromarray(crop).save(png)
    assert main(["predict", str(png), "--out", str(tmp_path / "out"), "--device", "cpu", "--tile-size", "256",
                 "--overlap", "64", "--quiet"]) == 0
    cli = tifffile.imread(tmp_path / "out" / "crop_labels.tif")

    viewer = make_napari_viewer()
    viewer.open(str(png))
    widget = SegmentWidget(viewer)
    assert widget.model_combo.set_model(DEFAULT_MODEL)
    widget.device_combo.addItem("cpu")
    widget.device_combo.setCurrentText("cpu")
    widget.tile_spin.setValue(256)
    widget.overlap_spin.setValue(64)
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=180000)
    (labels,) = [layer for layer in viewer.layers if "nucseg_result" in layer.metadata and layer.name.endswith(")")]
    gui = np.asarray(labels.data)
    assert gui.shape == cli.shape
    match = match_instances(cli, gui, 0.5)
    assert match.n_truth > 50
    print(f"\nCLI {match.n_truth} nuclei, widget {match.n_pred}; object F1 {match.f1:.4f}; "
          f"pixels that differ: {np.mean((cli > 0) != (gui > 0)):.4%}")
    assert match.f1 == 1.0 and np.array_equal(cli > 0, gui > 0)

    from nucseg.config import InferenceConfig, TilingConfig
    from nucseg.inference.predict import predict

    api = predict(crop, InferenceConfig(device="cpu", tiling=TilingConfig(256, 64)))  # thresholds left to the model
    print(f"predict(array) {api.n_nuclei} nuclei")
    np.testing.assert_array_equal(np.asarray(api.labels), cli)
    assert api.config.postprocess == labels.metadata["nucseg_result"].config.postprocess
