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
import os
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucseg.config import FinetuneConfig
from nucseg.errors import InvalidInputError
from nucseg.progress import Progress

if TYPE_CHECKING:
    from nucseg.training.corrections.store import CorrectionStore
    from nucseg.training.dataset import TrainingPair
    from nucseg.training.finetune import FinetuneResult
    from nucseg.training.holdout import HeldOut

#: written into a run folder after its first record: which corrections trained and validated it
RUN_SOURCES = "corrections_run.json"
#: validation scores shown before / after, in this order (the first decides: see nucseg.training.holdout)
METRICS = (("val_score", "held-out score"), ("val_aji", "AJI"), ("val_iou", "IoU"), ("val_f1", "F-score"),
           ("val_loss", "loss"))
#: `iter_finetune` keep policy of the command line without --keep-worse / with it
KEEP_FOR_CLI, KEEP_WORSE_FOR_CLI = "if_better", "always"


def corrections_finetune(store: CorrectionStore, config: FinetuneConfig, out_dir: str | Path, *,
                         original_dir: str | Path | None = None, resume: bool = False,
                         stop: threading.Event | None = None, keep: str = "ask",
                         ) -> Generator[Progress, None, FinetuneResult]:
    """`iter_finetune` on the reviewed corrections in `store` (run it in a worker thread: it reads every pair).

    A new run splits the reviewed entries by `config.validation_fraction` and records the split (and the
    original-data folder, which holds ``images/`` and ``labels/``) in ``RUN_SOURCES``; a resumed run reads it
    back, so it trains on exactly the same pairs. Entries nobody marked as reviewed are left out (counted in
    the "data" record, whose info is {"train", "val", "val_tiles", "unreviewed"}; the rest are `iter_finetune`'s).

    Raises:
        InvalidInputError: no reviewed correction in the store.
    """
    from nucseg.models.registry import resolve_model
    from nucseg.models.versions import is_candidate
    from nucseg.training.dataset import load_pairs
    from nucseg.training.finetune import iter_finetune
    from nucseg.training.holdout import HeldOut, whole_images

    out_dir = Path(out_dir)
    sources = out_dir / RUN_SOURCES
    if resume and is_candidate(out_dir):  # training is over: only the decision on its model is left
        return (yield from iter_finetune([], [], config, out_dir, resume=True, keep=keep))
    yield Progress(stage="reading the corrections", kind="preparing")
    model_mpp = resolve_model(config.base_model).mpp  # corrections from a 20x slide are resampled to it
    unreviewed = len(store.unreviewed())
    if resume and sources.is_file():
        record = json.loads(sources.read_text())
        original_dir = record.get("original_dir")
        if "entries" in record:
            train, val = split_for_validation(store.pairs(record["entries"], model_mpp), config)
        else:  # a run that held out whole corrections
            train, val = store.pairs(record["train"], model_mpp), store.pairs(record["val"], model_mpp)
    else:
        require_reviewed(store)
        pairs = store.pairs(model_mpp=model_mpp)
        train, val = split_for_validation(pairs, config)
    heldout = val if isinstance(val, HeldOut) else whole_images(val)
    yield _data_record(len(train), heldout, unreviewed)
    original = None  # the base model's replay set, if it carries one
    if original_dir and config.mix_original > 0:
        original = load_pairs(Path(original_dir) / "images", Path(original_dir) / "labels")
    info = {"description": f"fine-tuned from {Path(config.base_model).name} on {len(train)} corrections"}
    gen = iter_finetune(train, val, config, out_dir, original=original, resume=resume, stop=stop, info=info,
                        keep=keep)
    first = next(gen)  # the run folder is prepared (or refused) before this returns
    if not sources.is_file():
        tmp = sources.with_name(f".{RUN_SOURCES}.tmp")
        names = [p.name for p in train] + ([] if isinstance(val, HeldOut) else [p.name for p in val])
        tmp.write_text(json.dumps({"store": str(store.root), "entries": sorted(names), "holdout": config.holdout,
                                   "original_dir": str(original_dir or "") or None}))
        os.replace(tmp, sources)
    yield first
    return (yield from gen)


def _data_record(train: int, heldout: HeldOut, unreviewed: int) -> Progress:
    """What a run on the corrections trains and is judged on, as a "data" record (before any step: no count)."""
    tiles = len(set(heldout.groups))
    left = f"; {unreviewed} unreviewed left out" if unreviewed else ""
    return Progress(stage=f"training on {train} reviewed corrections, judging on {len(heldout)} held-out "
                          f"{heldout.kind} of {tiles}{left}", kind="data",
                    info={"train": train, "val": len(heldout), "val_tiles": tiles, "unreviewed": unreviewed})


def split_for_validation(pairs: Sequence[TrainingPair], config: FinetuneConfig
                         ) -> tuple[list[TrainingPair], HeldOut | list[TrainingPair]]:
    """(what trains, what judges the run) by `config.holdout`: held-out blocks of every pair ("regions",
    `nucseg.training.holdout.split_regions`), or whole pairs ("images")."""
    from nucseg.training.dataset import split_pairs
    from nucseg.training.holdout import split_regions

    if config.holdout == "regions":
        return split_regions(pairs, config.validation_fraction, config.seed)
    return split_pairs(pairs, config.validation_fraction, config.seed)


def saved_config(path: str | Path) -> dict[str, Any]:
    """The settings a run folder was started with (its finetune_config.json), as a dict for `FinetuneConfig`; runs
    started before regions were held out keep holding out whole images."""
    from nucseg.config import read_config_json

    values = read_config_json(path)
    values.setdefault("holdout", "images")
    return values


def require_original_data(config: FinetuneConfig, original_given: bool, how: str) -> None:
    """Refuse, before any work, a run that mixes original data in (`FinetuneConfig.mix_original`) when neither the
    user gave that data nor the base model carries a replay set; `how`: how to give it in this front end.

    Raises:
        InvalidInputError: nothing to mix in.
    """
    from nucseg.models.registry import resolve_model

    if config.mix_original and not original_given and resolve_model(config.base_model).replay_dir is None:
        raise InvalidInputError(f"{Path(config.base_model).name} carries no replay set: {how}")


def require_reviewed(store: CorrectionStore) -> None:
    """Refuse, before any work, a store with no reviewed correction (`no_reviewed_message` says what to do).

    Raises:
        InvalidInputError: nothing reviewed to train on.
    """
    if not any(e.reviewed for e in store.entries()):
        raise InvalidInputError(no_reviewed_message(len(store), len(store.unreviewed())))


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
                 config: FinetuneConfig
                 ) -> tuple[list[TrainingPair], HeldOut | list[TrainingPair], list[TrainingPair] | None]:
    """(train, val, original) pairs from folders, at the base model's resolution.

    Args:
        images, labels: paired by file name.
        val_images, val_labels: validation folders (whole images); without them `split_for_validation` holds
            out `config.validation_fraction` of the training data (of every image's blocks by default).
        reviewed: optional folder of reviewed masks paired by name (white = reviewed), as the corrections
            store exports them; images without one are taken as reviewed as a whole.
        original_images, original_labels: original data to rehearse (None: the base model's replay set).
        mpp: microns per pixel of the training and validation images (None: the model's).

    Raises:
        InvalidInputError: a folder pair is incomplete, or a bad `mpp`.
    """
    from nucseg.models.registry import resolve_model
    from nucseg.training.dataset import at_model_resolution, load_pairs

    if (val_images is None) != (val_labels is None):
        raise InvalidInputError("give both --val-images and --val-labels, or neither (then --val-fraction applies)")
    if (original_images is None) != (original_labels is None):
        raise InvalidInputError("give both --original-images and --original-labels, or neither")
    base = resolve_model(config.base_model)
    if mpp is not None:
        from nucseg.io.base import check_mpp

        mpp = check_mpp(mpp, "--mpp")

    def load(images_dir: Path, labels_dir: Path) -> list[TrainingPair]:
        return [at_model_resolution(p, mpp, base.mpp)
                for p in load_pairs(images_dir, labels_dir, reviewed_dir=reviewed)]

    pairs = load(images, labels)
    if val_images is not None:
        train, val = pairs, load(val_images, val_labels)  # type: ignore[arg-type]
    else:
        train, val = split_for_validation(pairs, config)
    # None: the base model's replay set (if it carries one) is mixed in at config.mix_original
    original = load_pairs(original_images, original_labels) if original_images else None
    return train, val, original


def folder_finetune(train: Sequence[TrainingPair], val: HeldOut | Sequence[TrainingPair], config: FinetuneConfig,
                    out_dir: str | Path, *, original: Sequence[TrainingPair] | None = None, resume: bool = False,
                    keep_worse: bool = False, stop: threading.Event | None = None,
                    ) -> Generator[Progress, None, FinetuneResult]:
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


def heldout_words(result: FinetuneResult) -> str:
    """"9 held-out regions of 3 corrections", or "2 validation images" when whole images were held out."""
    scores = result.after or result.before
    n, tiles = result.validation_images, len(scores.get("tiles") or [])
    if scores.get("heldout") == "regions":
        return f"{n} held-out region{'s' * (n != 1)} of {tiles} correction{'s' * (tiles != 1)}"
    return f"{n} validation image{'s' * (n != 1)}"


def verdict_lines(result: FinetuneResult) -> list[str]:
    """What came out, in plain words: the comparison with the base model on the held-out data (the score the
    verdict rests on, and on how many tiles it rose) and, after a Stop, how far it got."""
    from nucseg.training.verdict import (
        BETTER,
        MIN_HELDOUT_NUCLEI,
        NOT_BETTER,
        heldout_nuclei,
        tile_changes,
        verdict_key,
    )

    lines = []
    if result.stopped:
        lines.append(f"Stopped after {result.steps_done} of {result.steps_planned} training steps; the model is "
                     f"its best epoch so far (epoch {result.best_epoch}).")
    where = heldout_words(result)
    key = verdict_key(result.before, result.after)
    label = "held-out score" if key == "val_score" else "AJI"
    tiles = tile_rows(result.before, result.after)
    scored = sum(1 for _, _, after, _ in tiles if after is not None)  # tile_rows: no score without nuclei
    up, down = tile_changes(result.before, result.after)
    which = "corrections" if scored == len(tiles) else "corrections with held-out nuclei"
    per_tile = f" (higher on {up}, lower on {down} of {scored} {which})" if scored > 1 else ""
    if result.verdict == BETTER:
        before, after = result.before[key], result.after[key]
        lines.append(f"Better than its base model on the {where}: {label} {before:.3f} -> {after:.3f}{per_tile}.")
    elif result.verdict == NOT_BETTER:
        before, after = result.before[key], result.after[key]
        lines.append(f"NOT better than its base model on the {where}: {label} {before:.3f} -> {after:.3f}"
                     f"{per_tile}. Keeping it would segment such regions worse than the model you started from.")
    elif not result.after:
        lines.append("Not compared with its base model: nothing was held out (no validation images, and no "
                     "correction large enough to hold out a region: two blocks of 64 px); the best epoch was "
                     "chosen by training loss.")
    elif key is not None and result.before:
        n = int(heldout_nuclei(result.after))
        lines.append(f"Not judged: the {where} hold {n} nuclei, too few to tell a gain from chance (at least "
                     f"{MIN_HELDOUT_NUCLEI}): {label} {result.before[key]:.3f} -> {result.after[key]:.3f}{per_tile}. "
                     "Keep it if it segments your slides better; correct more, or larger, regions for a verdict.")
    else:
        after = result.after.get("val_score", result.after.get("val_aji"))
        lines.append(f"Not compared with its base model (it was untrained); score on the {where}: {after:.3f}.")
    if key == "val_score":
        lines.append("The held-out score is AJI inside the held-out regions, with each outline you accepted "
                     "unchanged counted as right for a model that finds that nucleus (docs/FINETUNING.md).")
    return lines


def scores_rows(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, float | None, float]]:
    """(label, before or None, after) for each validation metric present after fine-tuning."""
    return [(label, before.get(key), after[key]) for key, label in METRICS if key in after]


def tile_rows(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, float | None, float | None, int]]:
    """(tile, held-out score before, after, held-out nuclei) for each correction (or validation image). A score is
    None where it is not known (no "before") or means nothing: a region without held-out nuclei scores 1 when a
    model finds nothing there and 0 when it finds anything (seen: "1.0000 -> 0.0000" for one false nucleus); it
    still counts in the pooled score, by the pixels of what a model put there."""
    old = {t["tile"]: t for t in before.get("tiles") or []}
    return [(t["tile"], old[t["tile"]]["score"] if t["tile"] in old and t["nuclei"] else None,
             t["score"] if t["nuclei"] else None, int(t["nuclei"]))
            for t in after.get("tiles") or []]


def finished_version(result: FinetuneResult, keep_checkpoints: bool = False) -> Path | None:
    """The kept version's folder, without its training state unless asked (checkpoints only serve resuming)."""
    from nucseg.models.versions import discard_training_state

    if result.model_dir is not None and not keep_checkpoints:
        discard_training_state(result.model_dir)
    return result.model_dir
