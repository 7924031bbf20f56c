"""The fine-tuning job: what `nucseg finetune` and the Fine-tune widget both run, and how they report it.

* `corrections_finetune` trains on the corrections store (the widget): the reviewed entries, split into
  training and validation, recorded in the run folder (``RUN_SOURCES``) so a resumed run uses the same pairs.
* `folder_pairs` + `folder_finetune` train on folders of images and labels (the CLI).
* `verdict_lines` says in plain words what came out: better or not than the base model on the same
  validation images, how many steps ran after a Stop; `should_ask` is the widget's rule for when the person
  decides (keep or discard) and `KEEP_FOR_CLI` the command line's.

Both faces call `iter_finetune` through these functions, so they cannot drift apart. No Qt here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucseg.config import FinetuneConfig
from nucseg.errors import InvalidInputError

if TYPE_CHECKING:
    from nucseg.training.corrections import CorrectionStore
    from nucseg.training.dataset import TrainingPair
    from nucseg.training.finetune import FinetuneResult

#: written into a run folder after its first record: which corrections trained and validated it
RUN_SOURCES = "corrections_run.json"
#: validation scores shown before / after, in this order
METRICS = (("val_aji", "AJI"), ("val_iou", "IoU"), ("val_f1", "F-score"), ("val_loss", "loss"))
#: `iter_finetune` keep policy of the command line without --keep-worse / with it
KEEP_FOR_CLI, KEEP_WORSE_FOR_CLI = "if_better", "always"


def corrections_finetune(store: CorrectionStore, config: FinetuneConfig, out_dir: str | Path, *,
                         original_dir: str | Path | None = None, resume: bool = False,
                         stop: threading.Event | None = None, keep: str = "ask",
                         ) -> Generator[dict[str, Any], None, FinetuneResult]:
    """`iter_finetune` on the reviewed corrections in `store` (run it in a worker thread: it reads every pair).

    A new run splits the reviewed entries by `config.validation_fraction` and records the split (and the
    original-data folder, which holds ``images/`` and ``labels/``) in ``RUN_SOURCES``; a resumed run reads it
    back, so it trains on exactly the same pairs. Entries nobody marked as reviewed are left out (counted in
    the first record, ``{"kind": "data", "train", "val", "unreviewed"}``).

    Raises:
        InvalidInputError: no reviewed correction in the store.
    """
    from nucseg.models.registry import resolve_model
    from nucseg.models.versions import is_candidate
    from nucseg.training.dataset import load_pairs, split_pairs
    from nucseg.training.finetune import iter_finetune

    out_dir = Path(out_dir)
    sources = out_dir / RUN_SOURCES
    if resume and is_candidate(out_dir):  # training is over: only the decision on its model is left
        return (yield from iter_finetune([], [], config, out_dir, resume=True, keep=keep))
    model_mpp = resolve_model(config.base_model).mpp  # corrections from a 20x slide are resampled to it
    unreviewed = len(store.unreviewed())
    if resume and sources.is_file():
        record = json.loads(sources.read_text())
        train, val = store.pairs(record["train"], model_mpp), store.pairs(record["val"], model_mpp)
        original_dir = record.get("original_dir")
    else:
        pairs = store.pairs(model_mpp=model_mpp)
        if not pairs:
            raise InvalidInputError(no_reviewed_message(len(store), unreviewed))
        train, val = split_pairs(pairs, config.validation_fraction, config.seed)
    yield {"kind": "data", "train": len(train), "val": len(val), "unreviewed": unreviewed}
    original = None  # the base model's replay set, if it carries one
    if original_dir and config.mix_original > 0:
        original = load_pairs(Path(original_dir) / "images", Path(original_dir) / "labels")
    info = {"description": f"fine-tuned from {Path(config.base_model).name} on {len(train)} corrections"}
    gen = iter_finetune(train, val, config, out_dir, original=original, resume=resume, stop=stop, info=info,
                        keep=keep)
    first = next(gen)  # the run folder is prepared (or refused) before this returns
    if not sources.is_file():
        from nucseg.io.export import atomic_write_text

        atomic_write_text(sources, json.dumps({"store": str(store.root), "train": [p.name for p in train],
                                               "val": [p.name for p in val],
                                               "original_dir": str(original_dir or "") or None}))
    yield first
    return (yield from gen)


def no_reviewed_message(total: int, unreviewed: int) -> str:
    """Why there is nothing to train on, and what to do."""
    if not total:
        return "the corrections store is empty: add corrected regions with the Corrections widget first"
    return (f"none of the {total} corrections is marked as reviewed, so none is trained on: select them in the "
            "Corrections widget and press 'Mark fully reviewed' if you checked all of each, or add the regions "
            "again with what you checked marked in the 'reviewed regions' layer")


def folder_pairs(images: Path, labels: Path, *, val_images: Path | None = None, val_labels: Path | None = None,
                 reviewed: Path | None = None, original_images: Path | None = None,
                 original_labels: Path | None = None, mpp: float | None = None,
                 config: FinetuneConfig) -> tuple[list[TrainingPair], list[TrainingPair], list[TrainingPair] | None]:
    """(train, val, original) pairs from folders, at the base model's resolution.

    Args:
        images, labels: paired by file name.
        val_images, val_labels: validation folders; without them `config.validation_fraction` is split off.
        reviewed: optional folder of reviewed masks paired by name (white = reviewed), as the corrections
            store exports them; images without one are taken as reviewed as a whole.
        original_images, original_labels: original data to rehearse (None: the base model's replay set).
        mpp: microns per pixel of the training and validation images (None: the model's).

    Raises:
        InvalidInputError: a folder pair is incomplete, or a bad `mpp`.
    """
    from nucseg.models.registry import resolve_model
    from nucseg.training.dataset import at_model_resolution, load_pairs, split_pairs

    if (val_images is None) != (val_labels is None):
        raise InvalidInputError("give both --val-images and --val-labels, or neither (then --val-fraction applies)")
    if (original_images is None) != (original_labels is None):
        raise InvalidInputError("give both --original-images and --original-labels, or neither")
    base = resolve_model(config.base_model)
    if mpp is not None and mpp <= 0:
        raise InvalidInputError(f"--mpp {mpp:g}: microns per pixel must be positive (40x is about 0.25)")

    def load(images_dir: Path, labels_dir: Path) -> list[TrainingPair]:
        return [at_model_resolution(p, mpp, base.mpp)
                for p in load_pairs(images_dir, labels_dir, reviewed_dir=reviewed)]

    pairs = load(images, labels)
    if val_images is not None:
        train, val = pairs, load(val_images, val_labels)  # type: ignore[arg-type]
    else:
        train, val = split_pairs(pairs, config.validation_fraction, config.seed)
    # None: the base model's replay set (if it carries one) is mixed in at config.mix_original
    original = load_pairs(original_images, original_labels) if original_images else None
    return train, val, original


def folder_finetune(train: Sequence[TrainingPair], val: Sequence[TrainingPair], config: FinetuneConfig,
                    out_dir: str | Path, *, original: Sequence[TrainingPair] | None = None, resume: bool = False,
                    keep_worse: bool = False, stop: threading.Event | None = None,
                    ) -> Generator[dict[str, Any], None, FinetuneResult]:
    """`iter_finetune` for the command line: a model not better than its base is not registered unless
    `keep_worse` (it stays in `out_dir` as a candidate; ``--resume --keep-worse`` keeps it later)."""
    from nucseg.training.finetune import iter_finetune

    info = {"description": f"fine-tuned from {Path(config.base_model).name} on {len(train)} images"}
    return (yield from iter_finetune(train, val, config, out_dir, original=original, resume=resume, stop=stop,
                                     info=info, keep=KEEP_WORSE_FOR_CLI if keep_worse else KEEP_FOR_CLI))


def should_ask(result: FinetuneResult) -> bool:
    """The widget asks the person to keep or discard unless the run ended by itself with a model better than
    its base on validation (then it is kept, and the scores are shown)."""
    from nucseg.training.finetune import BETTER

    return result.pending and (result.stopped or result.verdict != BETTER)


def settle(result: FinetuneResult) -> FinetuneResult:
    """Keep at once what `should_ask` need not ask about (a run that ended by itself better than its base),
    without its training state; everything else is left waiting for the person. Run it in the worker."""
    if result.pending and not should_ask(result):
        result.keep()
        finished_version(result)
    return result


def verdict_lines(result: FinetuneResult) -> list[str]:
    """What came out, in plain words: the comparison with the base model and, after a Stop, how far it got."""
    from nucseg.training.finetune import BETTER, NOT_BETTER

    lines = []
    if result.stopped:
        lines.append(f"Stopped after {result.steps_done} of {result.steps_planned} training steps; the model is "
                     f"its best epoch so far (epoch {result.best_epoch}).")
    n = result.validation_images
    images = f"{n} validation image{'s' * (n != 1)}"
    before, after = result.before.get("val_aji"), result.after.get("val_aji")
    if result.verdict == BETTER:
        lines.append(f"Better than its base model on the {images}: AJI {before:.3f} -> {after:.3f}.")
    elif result.verdict == NOT_BETTER:
        lines.append(f"NOT better than its base model on the {images}: AJI {before:.3f} -> {after:.3f}. "
                     "Keeping it would segment these images worse than the model you started from.")
    elif "val_aji" not in result.after:
        lines.append("Not compared with its base model: there were no validation images (with fewer than two "
                     "corrections none is held out); the best epoch was chosen by training loss.")
    else:
        lines.append(f"Not compared with its base model (it was untrained); AJI on the {images}: {after:.3f}.")
    return lines


def scores_rows(before: dict[str, float], after: dict[str, float]) -> list[tuple[str, float | None, float]]:
    """(label, before or None, after) for each validation metric present after fine-tuning."""
    return [(label, before.get(key), after[key]) for key, label in METRICS if key in after]


def finished_version(result: FinetuneResult, keep_checkpoints: bool = False) -> Path | None:
    """The kept version's folder, without its training state unless asked (checkpoints only serve resuming)."""
    from nucseg.models.versions import discard_training_state

    if result.model_dir is not None and not keep_checkpoints:
        discard_training_state(result.model_dir)
    return result.model_dir
