"""Resumable training state without pickles: weights and Adam moments in safetensors, the rest in JSON.

Each save writes a complete new folder, then atomically points `latest.json` at it, so a kill -9 at any
moment leaves the previous checkpoint intact: at most the epoch in progress is lost.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from nucseg.errors import StoreError
from nucseg.io.export import atomic_output, atomic_write_text

LATEST = "latest.json"


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


def save_checkpoint(
    folder: Path, epoch: int, net: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> Path:
    """Write checkpoint `epoch` under `folder` and make it the latest; older ones are removed."""
    target = folder / f"epoch-{epoch:04d}"
    with atomic_output(target, overwrite=True) as tmp:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                  str(tmp / "weights.safetensors"))
        opt_tensors, opt_json = _optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "epoch": epoch, "optimizer": opt_json}, indent=1))
    atomic_write_text(folder / LATEST, json.dumps({"checkpoint": target.name, "epoch": epoch}))
    for old in folder.glob("epoch-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def has_checkpoint(folder: Path) -> bool:
    return (folder / LATEST).is_file()


def load_checkpoint(
    folder: Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> dict[str, Any]:
    """Restore the latest checkpoint into `net` and `optimizer`; returns its JSON state (with "epoch")."""
    try:
        latest = json.loads((folder / LATEST).read_text())
        target = folder / latest["checkpoint"]
        net.load_state_dict(load_file(str(target / "weights.safetensors"), device=str(device)))
        state = json.loads((target / "state.json").read_text())
        opt = load_file(str(target / "optimizer.safetensors"), device=str(device))
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise StoreError(f"cannot resume from {folder}: {err}; start a new run in a new folder instead") from err
    _restore_optimizer(optimizer, opt, state.pop("optimizer")["param_groups"])
    return state


def save_weights(path: Path, net: torch.nn.Module) -> None:
    """Atomically write just the weights (the best model so far)."""
    with atomic_output(path, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))


LOG_FIELDS = ("epoch", "train_loss", "train_iou", "train_f1", "val_loss", "val_iou", "val_f1", "val_aji", "lr",
              "best", "seconds", "partial")


def append_log(path: Path, record: dict[str, Any], fields: Sequence[str] = LOG_FIELDS) -> None:
    """One row of the run's log.csv (the header with the first)."""
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(record)
