"""Resumable training state without pickles: weights and Adam moments in safetensors, the rest in JSON.

Each save writes a complete new folder ``epoch-NNNN`` (under a temporary name, renamed when complete), then
atomically points `latest.json` at it, so a kill -9 or a full disk at any moment leaves the previous checkpoint
intact: at most the epoch in progress is lost. The last `KEEP` checkpoints are kept, each with the best weights as
of its epoch (``best.safetensors``, a hard link where the file system allows), so resuming from any of them is
consistent. `load_checkpoint` takes the newest checkpoint whose files all load and says which damaged ones it
passed over. Failed writes raise `StoreError` (one line) and leave no partial folder.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nucseg.errors import StoreError
from nucseg.io.export import atomic_write_text
from nucseg.io.outputs import write_failure

LATEST = "latest.json"
#: checkpoints kept (the newest first): a damaged newest one falls back to the one before
KEEP = 2
BEST_IN_CHECKPOINT = "best.safetensors"
#: keys `load_checkpoint` adds to the state it returns (where it came from), never saved back
LOADED_KEYS = ("checkpoint", "damaged_checkpoints")
#: what to do after a failed write of the training state
RESUME_FIX = "then run the same command with --resume"


def write_error(err: BaseException) -> OSError:
    """`err` as the OSError it stands for: safetensors reports a failed write (e.g. a full disk) as a
    SafetensorError whose message ends in "(os error N)"."""
    if isinstance(err, OSError):
        return err
    found = re.search(r"os error (\d+)", str(err))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code))


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text, fix=RESUME_FIX)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors = {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            tensors[f"{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def checkpoints(folder: Path) -> list[Path]:
    """The checkpoint folders under `folder`, newest first."""
    try:
        return sorted((p for p in folder.glob("epoch-*") if p.is_dir()), key=lambda p: p.name, reverse=True)
    except OSError:
        return []


def save_checkpoint(
    folder: Path, epoch: int, net: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
    best: Path | None = None,
) -> Path:
    """Write checkpoint `epoch` under `folder` and make it the latest; only the newest `KEEP` are kept.

    Args:
        best: the file holding the best weights so far when this epoch is not the best (``state["best_epoch"]``);
            when it is, the checkpoint's own weights are the best.

    Raises:
        StoreError: the checkpoint cannot be written (e.g. a full disk); the earlier ones are left as they were.
    """
    target = folder / f"epoch-{epoch:04d}"
    tmp = folder / f".epoch-{epoch:04d}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                  str(tmp / "weights.safetensors"))
        opt_tensors, opt_json = _optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        if state.get("best_epoch") == epoch:
            _link_or_copy(tmp / "weights.safetensors", tmp / BEST_IN_CHECKPOINT)
        elif best is not None and best.is_file():
            _link_or_copy(best, tmp / BEST_IN_CHECKPOINT)
        kept = {k: v for k, v in state.items() if k not in LOADED_KEYS}  # what load_checkpoint adds, not state
        (tmp / "state.json").write_text(json.dumps({**kept, "epoch": epoch, "optimizer": opt_json}, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(target, write_error(err), RESUME_FIX) from err
    _atomic_write_text(folder / LATEST, json.dumps({"checkpoint": target.name, "epoch": epoch}))
    for old in checkpoints(folder)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def has_checkpoint(folder: Path) -> bool:
    return (folder / LATEST).is_file() or bool(checkpoints(folder))


def _read_checkpoint(target: Path, device: torch.device) -> tuple[dict, dict, dict]:
    """(weights, optimizer tensors, state) of one checkpoint folder; raises when any of them is damaged."""
    state = json.loads((target / "state.json").read_text())
    if not isinstance(state, dict) or "optimizer" not in state:
        raise ValueError("state.json is incomplete")
    weights = load_file(str(target / "weights.safetensors"), device=str(device))
    opt = load_file(str(target / "optimizer.safetensors"), device=str(device))
    if (target / BEST_IN_CHECKPOINT).exists():
        load_file(str(target / BEST_IN_CHECKPOINT), device="cpu")  # a damaged copy of the best is no base either
    return weights, opt, state


def load_checkpoint(
    folder: Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> dict[str, Any]:
    """Restore the newest intact checkpoint into `net` and `optimizer`; returns its JSON state (with "epoch", and
    "damaged_checkpoints": the newer ones passed over, as "name: reason" lines).

    Raises:
        StoreError: no checkpoint under `folder` can be read.
    """
    damaged: list[str] = []
    for target in checkpoints(folder):
        try:
            weights, opt, state = _read_checkpoint(target, device)
            net.load_state_dict(weights)
            _restore_optimizer(optimizer, opt, state.pop("optimizer")["param_groups"])
        except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as err:
            text = " ".join(str(err).split())[:160] or type(err).__name__
            damaged.append(f"{target.name}: {text}")
            continue
        state["damaged_checkpoints"] = damaged
        state["checkpoint"] = target
        return state
    found = "; ".join(damaged) if damaged else "no checkpoint folder"
    raise StoreError(f"cannot resume from {folder}: no intact checkpoint ({found}); start the run again in a new "
                     "folder")


def restore_best(checkpoint: Path, best: Path) -> bool:
    """Put the checkpoint's copy of the best weights at `best` (atomically); False when it holds none."""
    source = checkpoint / BEST_IN_CHECKPOINT
    if not source.is_file():
        return False
    tmp = best.with_name(f".{best.name}.restore.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _link_or_copy(source, tmp)
        os.replace(tmp, best)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_failure(best, err, RESUME_FIX) from err
    return True


def save_weights(path: Path, net: torch.nn.Module) -> None:
    """Atomically write just the weights (the best model so far).

    Raises:
        StoreError: they cannot be written (no partial file is left).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_failure(path, write_error(err), RESUME_FIX) from err


LOG_FIELDS = ("epoch", "train_loss", "train_iou", "train_f1", "val_loss", "val_iou", "val_f1", "val_aji", "lr",
              "best", "seconds", "partial")


def append_log(path: Path, record: dict[str, Any], fields: Sequence[str] = LOG_FIELDS) -> None:
    """One row of the run's log.csv (the header with the first)."""
    new = not path.exists()
    try:
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(record)
    except OSError as err:
        raise write_failure(path, err, RESUME_FIX) from err
