"""Fine-tuning says what it does and how long it takes (issue 20, item 6): a time estimate before Start from a
measured training step, something on screen within seconds of Start, the remaining time while it runs, curves
that move with every few steps rather than once an epoch, the per-correction verdict, and the same defaults in the
widget as on the command line."""

from __future__ import annotations

import time

import pytest
from test_finetune import tiny_model  # noqa: F401 - fixture
from test_widget_finetune import base_version, errors, home, set_tiny, store_with_pairs  # noqa: F401 - fixtures

pytestmark = pytest.mark.gui


def test_the_widgets_defaults_are_the_command_lines(make_napari_viewer, home):  # noqa: F811
    from nucseg._napari.finetune_settings import FinetuneSettings
    from nucseg.config import FinetuneConfig
    from nucseg.models.registry import DEFAULT_MODEL

    settings = FinetuneSettings()
    settings.follow_base(DEFAULT_MODEL)
    assert settings.config(DEFAULT_MODEL, "auto") == FinetuneConfig(base_model=DEFAULT_MODEL)


def test_estimate_before_start_then_progress_remaining_time_and_curves(
        make_napari_viewer, qtbot, store_with_pairs, base_version, errors, monkeypatch):  # noqa: F811
    from nucseg._napari import plots
    from nucseg._napari.finetune_widget import FinetuneWidget

    monkeypatch.setattr(plots, "STEP_REDRAW_S", 0.0)  # every step redraws here (the tiny steps are milliseconds)
    viewer = make_napari_viewer(show=True)
    widget = FinetuneWidget(viewer)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(str(base_version)))
    set_tiny(widget, epochs=2, steps=3)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    qtbot.waitUntil(lambda: "A run takes about" in widget.estimate_label.text(), timeout=120000)
    assert "6 steps of" in widget.estimate_label.text()
    (measured,) = widget.estimates.values()
    assert measured["step_s"] > 0 and measured["predict_px_s"] > 0

    statuses = []
    widget.controls.status.setText = lambda text, real=widget.controls.status.setText: (statuses.append(
        (time.perf_counter(), text)), real(text))[1]
    t0 = time.perf_counter()
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=240000)
    assert errors == []
    first = min(t for t, _ in statuses if t >= t0)
    assert first - t0 < 10  # something on screen at once
    texts = [text for _, text in statuses]
    assert any(text.startswith("loading the base model") or text.startswith("reading the corrections")
               for text in texts)
    assert any("scoring the base model on the held-out regions" in text for text in texts)
    assert any(" left" in text and "step" in text for text in texts)  # the remaining time while it runs
    assert len(widget.plots.step_loss) == 6 and widget.plots.draws >= 3
    result = widget.result
    assert result is not None and result.validation_images == 3 and len(result.after["tiles"]) == 3
    assert "per correction" in widget.decision.text.text()
