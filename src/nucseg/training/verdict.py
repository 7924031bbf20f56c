"""What a fine-tuning run produced and how it compares with its base: `FinetuneResult`, the verdict, and the
candidate (model.safetensors + candidate.json) a run writes from its best epoch.

The verdict rests on the held-out score (`nucseg.training.holdout`): BETTER when the new model scores above its
base on the same held-out data; runs made before it existed compare AJI. Whether a candidate becomes a version is
the caller's `keep` policy (`nucseg.training.finetune.iter_finetune`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucseg.config import FinetuneConfig
from nucseg.errors import StoreError
from nucseg.io.export import atomic_write_text
from nucseg.io.outputs import write_failure
from nucseg.models.registry import REPLAY_DIR, WEIGHTS_FILE, ModelSpec
from nucseg.models.versions import CANDIDATE_CONFIG, is_candidate, register_candidate

if TYPE_CHECKING:  # torch is imported by training, not by a viewer reading a run's verdict
    import torch

BEST_WEIGHTS = "best.safetensors"
#: the score that chooses the best epoch and decides the verdict, and the one used before it existed
SCORE_KEY, LEGACY_SCORE_KEY = "val_score", "val_aji"

#: `FinetuneResult.verdict`: the best epoch against the base model, by the held-out score on the same held-out data
BETTER, NOT_BETTER, NOT_COMPARED = "better", "not better", "not compared"
#: `iter_finetune(keep=...)`: register the candidate always, only when it beat its base (or could not be
#: compared: no validation images or an untrained base), or never (the caller asks the user)
KEEP_POLICIES = ("always", "if_better", "ask")
#: fewer held-out nuclei than this cannot tell a gain from chance: the verdict is NOT_COMPARED and the person decides
#: (TNBC patient 09, 3 corrected tiles, 20 held-out nuclei: runs that gained +0.045 and +0.038 AJI on the patient's
#: other tiles scored +0.009 and -0.004 there; the held-out score of one nucleus moves by about 1 / 20)
MIN_HELDOUT_NUCLEI = 50
#: a tile's held-out score counts as risen or fallen when it moved by more than this
TILE_TOLERANCE = 1e-3


def verdict_key(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """The score both sides have: the held-out score (`nucseg.training.holdout`), else AJI (runs made before it)."""
    for key in (SCORE_KEY, LEGACY_SCORE_KEY):
        if key in before and key in after:
            return key
    return None


def tile_changes(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int]:
    """(tiles whose held-out score rose, tiles whose score fell) by more than `TILE_TOLERANCE`, among the tiles with
    held-out nuclei (a region without any has no score of its own: 1 with nothing found there, 0 with anything)."""
    old = {t["tile"]: t["score"] for t in before.get("tiles") or []}
    deltas = [t["score"] - old[t["tile"]] for t in after.get("tiles") or [] if t["tile"] in old and t["nuclei"]]
    return sum(d > TILE_TOLERANCE for d in deltas), sum(d < -TILE_TOLERANCE for d in deltas)


def compare_with_base(before: dict[str, Any], after: dict[str, Any]) -> str:
    """BETTER when the new model's held-out score is above the base model's on the same held-out data, NOT_BETTER
    when it is equal or below, NOT_COMPARED without both scores or with fewer than `MIN_HELDOUT_NUCLEI` held-out
    nuclei.

    The score is pooled over every held-out nucleus and pixel of every correction (AJI's sums), not a vote of the
    corrections: with two or three corrections a vote cannot see a real gain (seen on TNBC patient 09, 3 corrected
    tiles: the held-out score rose 0.636 -> 0.645 while it fell on 1 of the 2 tiles with held-out nuclei, and the
    model gained +0.045 AJI on the patient's 3 other tiles). `tile_changes` says on how many it rose and fell."""
    key = verdict_key(before, after)
    if key is None or heldout_nuclei(after) < MIN_HELDOUT_NUCLEI:
        return NOT_COMPARED
    return BETTER if after[key] > before[key] else NOT_BETTER


def heldout_nuclei(scores: dict[str, Any]) -> float:
    """Truth nuclei in the held-out data the scores come from (infinite when not recorded: runs made before)."""
    tiles = scores.get("tiles")
    return float(sum(int(t["nuclei"]) for t in tiles)) if tiles else float("inf")


@dataclasses.dataclass
class FinetuneResult:
    """What a run produced.

    Attributes:
        model_dir: the new version's folder once it is kept (registered); None while it waits for a decision,
            when it was not kept, or when no epoch finished.
        history: the epoch records.
        before: the base model's validation scores.
        after: the best epoch's validation scores (same images, same thresholds).
        stopped: Stop ended the run.
        postprocess_tuning: the watershed re-tuning, when asked.
        run_dir: the run's folder (the candidate lies there until it is kept or discarded).
        candidate: a model was written (at least one epoch, or part of one, was validated).
        steps_done: training steps that ran; steps_planned: epochs x steps per epoch.
        best_epoch: the epoch the model comes from (0: none).
        validation_images: how many images `before` and `after` were scored on.
    """

    model_dir: Path | None
    history: list[dict[str, Any]]
    before: dict[str, float]
    after: dict[str, float]
    stopped: bool
    postprocess_tuning: dict[str, Any] | None = None
    run_dir: Path | None = None
    candidate: bool = False
    steps_done: int = 0
    steps_planned: int = 0
    best_epoch: int = 0
    validation_images: int = 0

    @property
    def verdict(self) -> str:
        return compare_with_base(self.before, self.after)

    @property
    def pending(self) -> bool:
        """A candidate waits for the keep / discard decision."""
        return self.candidate and self.model_dir is None and self.run_dir is not None and is_candidate(self.run_dir)

    def keep(self) -> Path:
        """Register the candidate as a version (the user chose to keep it); returns its folder."""
        if self.run_dir is None:
            raise StoreError("this run wrote no model: nothing to keep")
        self.model_dir = register_candidate(self.run_dir)
        return self.model_dir


def pending_result(run_dir: str | Path) -> FinetuneResult:
    """The result of a finished run whose candidate waits for a decision, read back from its candidate.json."""
    run_dir = Path(run_dir)
    try:
        cfg = json.loads((run_dir / CANDIDATE_CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise StoreError(f"cannot read {run_dir / CANDIDATE_CONFIG}: {err}") from err
    run = cfg.get("run") or {}
    validation = cfg.get("validation") or {}
    return FinetuneResult(None, list(cfg.get("history") or []), dict(validation.get("before") or {}),
                          dict(validation.get("after") or {}), bool(run.get("stopped")), cfg.get("postprocess_tuning"),
                          run_dir, True, int(run.get("steps_done", 0)), int(run.get("steps_planned", 0)),
                          int(cfg.get("best_epoch", 0)), int(run.get("validation_images", 0)))


def best_record(state: dict[str, Any]) -> dict[str, Any]:
    """Validation scores of the best epoch (the last record of that epoch: a resumed epoch is re-run)."""
    best = [r for r in state["history"] if r["epoch"] == state["best_epoch"] and r.get("best")]
    return {k: v for k, v in best[-1].items() if k.startswith("val_") or k in ("tiles", "heldout")} if best else {}


def write_candidate(out_dir: Path, base: ModelSpec, config: FinetuneConfig, state: dict[str, Any],
                     info: dict[str, Any] | None, weights: dict[str, torch.Tensor] | None = None,
                     tuning: dict[str, Any] | None = None, run: dict[str, Any] | None = None) -> Path:
    """Write model.safetensors + candidate.json from the best epoch (`weights`, else best.safetensors)."""
    import datetime as _dt

    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from nucseg.models.registry import sha256_of
    from nucseg.training.checkpoint import RESUME_FIX, write_error

    if weights is None:
        weights = load_file(str(out_dir / BEST_WEIGHTS))
    tmp = out_dir / f".{WEIGHTS_FILE}.tmp"
    try:
        save_file(weights, str(tmp))
        tmp.replace(out_dir / WEIGHTS_FILE)
    except (OSError, SafetensorError) as err:
        tmp.unlink(missing_ok=True)
        raise write_failure(out_dir / WEIGHTS_FILE, write_error(err), RESUME_FIX) from err
    cfg = base.to_config()
    cfg.update({
        "name": out_dir.name,
        "description": f"fine-tuned from {base.name}",
        "base_model": {"name": base.name, "sha256": base.sha256},
        "finetune": config.to_dict(),
        "best_epoch": state["best_epoch"],
        "validation": {"before": state["before"], "after": best_record(state),
                       "verdict": compare_with_base(state["before"], best_record(state))},
        "run": run or {},
        "history": state["history"],
        "postprocess": tuning["chosen"] if tuning else base.postprocess_defaults,
        **({"postprocess_tuning": tuning} if tuning else {}),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(info or {}),
        "sha256": sha256_of(out_dir / WEIGHTS_FILE),
    })
    if base.replay_dir is not None and not (out_dir / REPLAY_DIR).exists():
        # the lineage keeps rehearsing the original data when this version is fine-tuned in turn
        replay_tmp = out_dir / f".{REPLAY_DIR}.tmp"
        try:
            shutil.rmtree(replay_tmp, ignore_errors=True)
            shutil.copytree(base.replay_dir, replay_tmp)
            os.replace(replay_tmp, out_dir / REPLAY_DIR)
        except OSError as err:
            shutil.rmtree(replay_tmp, ignore_errors=True)
            raise write_failure(out_dir / REPLAY_DIR, err, RESUME_FIX) from err
    atomic_write_text(out_dir / CANDIDATE_CONFIG, json.dumps(cfg, indent=2), fix=RESUME_FIX)
    return out_dir
