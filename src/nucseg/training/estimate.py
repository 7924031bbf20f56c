"""How long a fine-tuning run takes: measured, not assumed.

A run is one scoring of the base model on the held-out data, then `epochs` x (`steps_per_epoch` training steps +
one scoring of the new weights). `run_seconds` and `remaining_seconds` turn measured times of one step and of one
scoring into minutes; `measure_step` times a real training step of a model (random pixels, the run's batch and patch
size, its device and threads) and `measure_prediction` the network's inference on one held-out-sized crop, so the
Fine-tune widget can say how long a run will take before Start. While a run goes, `iter_finetune` feeds the same
functions its own step and scoring times (its step records carry ``eta_s``).

Early stopping can end a run sooner: estimates are for the whole run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

#: the first training step of a process pays for allocations and kernel choices; it is not counted
WARMUP_STEPS = 1
#: steps averaged for the pace (the latest ones: the machine's load changes)
PACE_WINDOW = 10


def run_seconds(epochs: int, steps_per_epoch: int, step_s: float, validation_s: float, validated: bool = True
                ) -> float:
    """The whole run: the base model scored once, then each epoch's steps and scoring."""
    scorings = (epochs + 1) if validated else 0
    return epochs * steps_per_epoch * step_s + scorings * validation_s


def remaining_seconds(steps_left: int, validations_left: int, step_s: float, validation_s: float) -> float:
    """What is left of a run at this pace."""
    return max(0.0, steps_left * step_s + validations_left * validation_s)


def pace(step_times: Sequence[float]) -> float | None:
    """Seconds per step: the median of the latest steps after the warm-up one; None before a step was timed."""
    import statistics

    timed = list(step_times[WARMUP_STEPS:]) or list(step_times)
    if not timed:
        return None
    return float(statistics.median(timed[-PACE_WINDOW:]))


def scoring_seconds_guess(pixels: int, step_s: float, batch_size: int, patch_size: int) -> float:
    """Seconds to score `pixels` held-out pixels, guessed from a training step before a scoring was timed: a
    forward pass costs about a third of a training step's forward + backward, per pixel, plus the watershed."""
    per_pixel = step_s / (3.0 * batch_size * patch_size * patch_size)
    return 1.5 * pixels * per_pixel


def heldout_pixels_guess(areas: Sequence[float], fraction: float) -> int:
    """Pixels predicted to score the held-out regions of corrections of these reviewed areas (at the model's
    resolution): `fraction` of each, with the context around every block (`nucseg.training.holdout`)."""
    from nucseg.training.holdout import BLOCK, CONTEXT

    context = ((BLOCK + 2 * CONTEXT) / BLOCK) ** 2
    return int(sum(areas) * fraction * context)


def format_minutes(seconds: float) -> str:
    """"about 40 s", "about 9 min", "about 1 h 05 min"."""
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60:02d} min"


def measure_step(base_model: Any, batch_size: int, patch_size: int, device: str = "auto", num_threads: int = 0,
                 steps: int = 2) -> dict[str, Any]:
    """Time real training steps of `base_model` (a registry name, a folder or a `ModelSpec`) on random pixels
    (forward, loss, backward, Adam), as `iter_finetune` runs them, and one forward pass in evaluation mode:
    ``{"step_s", "cpu_s", "predict_px_s", "device", "threads"}`` (cpu_s: the process's CPU seconds in that step,
    all threads; predict_px_s: seconds per predicted pixel). The last step counts (the first pays for set-up)."""
    import numpy as np
    import torch

    from nucseg.inference.forward import normalise
    from nucseg.models.build import build_network, load_weights
    from nucseg.models.device import select_device
    from nucseg.models.registry import ModelSpec, resolve_model
    from nucseg.training.losses import nucseg_loss
    from nucseg.training.targets import instance_targets

    if num_threads:
        torch.set_num_threads(num_threads)
    spec = base_model if isinstance(base_model, ModelSpec) else resolve_model(base_model)
    dev = select_device(device)
    net = build_network(spec)
    if spec.trained and spec.weights_path is not None:
        load_weights(net, spec)
    net.to(dev)
    if dev.type == "cpu":
        net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-6)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, patch_size, patch_size, 3), dtype=np.uint8)
    labels = np.zeros((patch_size, patch_size), np.uint32)
    labels[patch_size // 4 : patch_size // 2, patch_size // 4 : patch_size // 2] = 1
    targets = np.repeat(instance_targets(labels)[None], batch_size, axis=0)
    x = normalise(torch.from_numpy(images).to(dev), spec)
    if dev.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(targets).to(dev)
    net.train()
    times, cpu = [], []
    for _ in range(max(1, steps)):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = nucseg_loss(net(x).float(), y)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    net.eval()
    with torch.inference_mode():
        t0 = time.perf_counter()
        net(x[:1])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        predict_s = time.perf_counter() - t0
    return {"step_s": times[-1], "cpu_s": cpu[-1], "predict_px_s": predict_s / (patch_size * patch_size), "device": dev.type,
            "threads": torch.get_num_threads()}
