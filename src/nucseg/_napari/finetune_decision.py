"""The keep-or-discard choice after a fine-tuning run, in the Fine-tune widget.

A run that ends by itself with a model better than its base on validation is kept at once (the scores are
shown). Otherwise (not better, not comparable, or Stop) the panel says so in plain words, with the scores and
how many steps ran, and waits: *Keep as a new version* registers it, *Discard* moves it to the trash
(``$NUCSEG_HOME/trash/models``; nothing is erased). The same choice comes back for a run left undecided when
the viewer was closed (`nucseg.models.versions.pending_candidates`).
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from nucseg.errors import NucsegError
from nucseg.jobs.finetune import finished_version, scores_rows, should_ask, tile_rows, verdict_lines
from nucseg.models import versions

from ._workers import error_message

if TYPE_CHECKING:
    from nucseg.training.finetune import FinetuneResult


def scores_html(before: dict[str, float], after: dict[str, float]) -> str:
    """A small table of validation scores before and after fine-tuning."""
    if not after:
        return "no validation corrections: the best epoch was chosen by training loss"
    rows = "".join(f"<tr><td>{label}</td><td align='right'>{'-' if b is None else f'{b:.3f}'}</td>"
                   f"<td align='right'>{a:.3f}</td></tr>" for label, b, a in scores_rows(before, after))
    table = f"<table><tr><th>held out</th><th>before</th><th>after</th></tr>{rows}</table>"
    tiles = tile_rows(before, after)
    if len(tiles) > 1:  # the verdict per correction: where it rose and where it fell
        def cell(score: float | None, bold: bool = False) -> str:
            text = "-" if score is None else f"{score:.3f}"
            return f"<td align='right'>{f'<b>{text}</b>' if bold else text}</td>"

        cells = "".join(f"<tr><td>{escape(name[-28:])}</td>{cell(b)}"
                        f"{cell(a, b is not None and a is not None and a > b)}<td align='right'>{n}</td></tr>"
                        for name, b, a, n in tiles)
        table += (f"<table><tr><th>per correction</th><th>before</th><th>after</th><th>nuclei</th></tr>{cells}"
                  "</table>")
        if any(a is None for _, _, a, _ in tiles):
            table += "<small>-: no held-out nuclei there, so no score of its own (it counts in the pooled one)</small>"
    return table


def result_html(result: FinetuneResult, head: str) -> str:
    lines = "<br>".join(escape(line) for line in verdict_lines(result))
    return f"<b>{escape(head)}</b><br>{lines}<br>{scores_html(result.before, result.after)}"


class DecisionPanel(QGroupBox):
    """Shows a run's outcome; asks to keep or discard its model when `should_ask` says so.

    Signals:
        decided: emitted with the kept version's folder, or None when the model was discarded.
    """

    decided = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Result", parent)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.keep_button = QPushButton("Keep as a new version")
        self.discard_button = QPushButton("Discard (to the trash)")
        self.keep_button.setToolTip("register it: it appears in the model lists and can be used to segment")
        self.discard_button.setToolTip(f"move it to {versions.trash_dir()}; nothing is erased")
        buttons = QHBoxLayout()
        buttons.addWidget(self.keep_button)
        buttons.addWidget(self.discard_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addLayout(buttons)
        self.keep_button.clicked.connect(self.keep)
        self.discard_button.clicked.connect(self.discard)
        self.result: FinetuneResult | None = None
        self._set_asking(False)
        self.text.setText("The outcome of a run appears here: a model better than its base on validation is "
                          "kept; otherwise you choose to keep or discard it.")

    @property
    def asking(self) -> bool:
        """The panel waits for keep or discard."""
        return self.result is not None and self.keep_button.isEnabled()

    def _set_asking(self, asking: bool) -> None:
        for button in (self.keep_button, self.discard_button):
            button.setVisible(asking)
            button.setEnabled(asking)

    def show_result(self, result: FinetuneResult) -> None:
        """Keep a better model at once; otherwise show the verdict and ask."""
        self.result = result
        if not result.candidate:
            self._set_asking(False)
            self.text.setText("Stopped before the first training step ended: no model was made.")
            return
        if should_ask(result):
            self._set_asking(True)
            self.setTitle("Keep this model?")
            self.text.setText(result_html(result, f"{result.run_dir.name} waits for your decision"))
            return
        if result.model_dir is None:  # not settled by the job (a caller that did not run `settle`)
            try:
                result.keep()
                finished_version(result)
            except NucsegError as err:
                show_error(error_message(err))
                return
        self._done(result, f"new version {result.model_dir.name}")
        show_info(f"fine-tuned model saved as {result.model_dir}")

    def keep(self) -> Path | None:
        """Register the shown model as a version."""
        result = self.result
        if result is None or not result.pending:
            return None
        try:
            result.keep()
            finished_version(result)
        except NucsegError as err:
            show_error(error_message(err))
            return None
        self._done(result, f"kept as new version {result.model_dir.name}")
        self.decided.emit(result.model_dir)
        return result.model_dir

    def discard(self) -> Path | None:
        """Move the shown model to the trash; returns where it lies now."""
        result = self.result
        if result is None or not result.pending:
            return None
        try:
            target = versions.discard_candidate(result.run_dir)
        except NucsegError as err:
            show_error(error_message(err))
            return None
        self._set_asking(False)
        self.setTitle("Result")
        self.text.setText(f"<b>discarded {escape(result.run_dir.name)}</b>: moved to {escape(str(target))}; "
                          "the model lists are unchanged")
        self.decided.emit(None)
        return target

    def _done(self, result: FinetuneResult, head: str) -> None:
        self._set_asking(False)
        self.setTitle("Result")
        tuned = ""
        if result.postprocess_tuning:
            from nucseg.training.postprocess_tuning import describe_tuning

            tuned = f"<br>{escape(describe_tuning(result.postprocess_tuning))}"
        self.text.setText(result_html(result, head) + tuned)
