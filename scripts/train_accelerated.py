"""Train the default model on a GPU within a time budget; `train_default.py export --run-dir DIR` ships the result.

    python scripts/train_accelerated.py --out DIR [--budget 420 | --steps N] [--batch-size 32] [--workers 14]

Same data, validation split, augmentations and loss as scripts/train_default.py, but arranged for an accelerator:
a DataLoader with worker processes augments patches (one process cannot keep a GPU busy: a 256-px patch costs
~30 ms of CPU), bf16 autocast and channels_last, a cosine learning rate over a step count fixed in advance, and an
exponential moving average of the weights, which is what gets validated and kept. With `--budget`, the step count
is what the budget allows at the speed measured over the first steps; it is recorded, and `--steps` replays it
(patch i depends only on the seed and i).

DIR receives finetune_config.json, log.csv (one row per validation), run.json and best.safetensors (fp16, the
best validation AJI so far, rewritten after each validation, so a run cut short still leaves its best). Unlike
train_default.py it does not resume: it is meant for one lease of an accelerator.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: a BLAS pool per augmentation worker oversubscribes
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_default import CONFIG, VALIDATION, load_split  # noqa: E402

#: fraction of the budget kept for validation passes (~3 s each on a GPU machine) and the final save
VALIDATION_SHARE = 0.12
PLAN_STEP = 60
LOG_FIELDS = ("step", "train_loss", "val_loss", "val_iou", "val_f1", "val_aji", "lr", "best", "seconds", "data_wait",
              "validation_s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data", type=Path, help="MoNuSeg folder with images/ and labels/ (default: train_default's)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds of training (ignored with --steps)")
    parser.add_argument("--steps", type=int, help="fixed number of steps (replays a budgeted run)")
    parser.add_argument("--base", default="unet-efficientnet-b0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=CONFIG["patch_size"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=150, help="steps of linear learning-rate warm-up")
    parser.add_argument("--ema", type=float, default=0.998, help="decay of the weights' moving average")
    parser.add_argument("--validations", type=int, default=15, help="validation passes over the run")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--seed", type=int, default=CONFIG["seed"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser.parse_args()


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + np.cos(np.pi * progress)))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, step: int, decay: float) -> None:
    d = min(decay, (1 + step) / (10 + step))  # short memory at first, while the weights move fast
    for e, p in zip(ema.state_dict().values(), net.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(p, 1.0 - d)
        else:
            e.copy_(p)


def save_fp16(path: Path, net: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    tensors = {k: (v.half() if v.dtype.is_floating_point else v).detach().cpu().contiguous()
               for k, v in net.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def main() -> None:
    args = parse_args()
    import train_default

    from nucseg.config import PostprocessConfig
    from nucseg.inference.forward import normalise
    from nucseg.models.build import build_network
    from nucseg.models.device import select_device, training_autocast_dtype
    from nucseg.models.registry import resolve_model
    from nucseg.training.dataset import PatchDataset
    from nucseg.training.finetune import append_log
    from nucseg.training.losses import nucseg_loss
    from nucseg.training.validation import validate

    if args.data:
        train_default.DATA = args.data
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    train_pairs, val_pairs = load_split()
    device = select_device(args.device)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True
    base = resolve_model(args.base)
    net = build_network(base).to(device).to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).eval()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    amp_dtype = training_autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    post = PostprocessConfig(**base.postprocess_defaults)
    max_steps = args.steps or 1_000_000
    dataset = PatchDataset(train_pairs, args.patch_size, CONFIG["augmentations"], args.seed,
                           length=max_steps * args.batch_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=False, drop_last=True, num_workers=args.workers,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers > 0 else None, worker_init_fn=_one_thread)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    settings = {**CONFIG, "base_model": args.base, "learning_rate": args.lr, "batch_size": args.batch_size,
                "patch_size": args.patch_size, "seed": args.seed, "schedule": "cosine", "warmup": args.warmup,
                "ema": args.ema, "validation": VALIDATION, "workers": args.workers, "device": gpu,
                "amp": str(amp_dtype), "script": "scripts/train_accelerated.py"}
    for epoch_based in ("epochs", "steps_per_epoch", "early_stopping_patience", "plateau_patience", "mix_original"):
        settings.pop(epoch_based, None)
    total = args.steps
    val_every = max(PLAN_STEP, total // args.validations) if total else None  # set with the plan under a budget
    run = {"best_step": 0, "best_aji": None}  # the scores of every validation are in log.csv
    losses, data_wait, t_train, t_val = [], 0.0, 0.0, 0.0
    t_mark = time.perf_counter()
    print(json.dumps({"kind": "start", "device": gpu, "amp": str(amp_dtype), "train_tiles": len(train_pairs),
                      "val_tiles": len(val_pairs), "setup_s": round(t_mark - t_start, 1)}), flush=True)
    step = 0
    net.train()
    for images, targets in loader:
        t0 = time.perf_counter()
        data_wait += t0 - t_mark
        if step == 20:
            busy20 = t_train + data_wait
        if total is None and step == PLAN_STEP:  # the pace over steps 20-60, data waits included (autotuning over)
            per_step = (t_train + data_wait - busy20) / (PLAN_STEP - 20)
            budget_left = args.budget * (1 - VALIDATION_SHARE) - (t0 - t_start)
            total = step + max(1, int(budget_left / per_step))
            val_every = max(PLAN_STEP, total // args.validations)
            print(json.dumps({"kind": "plan", "seconds_per_step": round(per_step, 4), "steps": total,
                              "validate_every": val_every}), flush=True)
        lr = cosine_lr(step, total or max_steps, args.lr, args.warmup)  # before the plan: still at the cosine's start
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = normalise(images.to(device, non_blocking=True), base).contiguous(memory_format=torch.channels_last)
        y = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = net(x)
        loss = nucseg_loss(logits.float(), y, CONFIG["loss"])["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        update_ema(ema, net, step, args.ema)
        losses.append(loss.detach())
        step += 1
        t_mark = time.perf_counter()
        t_train += t_mark - t0
        done = total is not None and step >= total
        if (val_every and step % val_every == 0) or done:
            tv = time.perf_counter()
            scores = validate(ema, base, val_pairs, device, post, CONFIG["loss"])
            improved = run["best_aji"] is None or scores["val_aji"] > run["best_aji"]
            if improved:
                run.update(best_step=step, best_aji=scores["val_aji"])
                save_fp16(out / "best.safetensors", ema)
            t_val += time.perf_counter() - tv
            record = {"step": step, "train_loss": float(torch.stack(losses).mean()), **scores, "lr": lr,
                      "best": improved, "seconds": round(time.perf_counter() - t_start, 1),
                      "data_wait": round(data_wait, 1), "validation_s": round(t_val, 1)}
            losses = []
            append_log(out / "log.csv", record, LOG_FIELDS)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}), flush=True)
            (out / "finetune_config.json").write_text(json.dumps({**settings, "steps": total}, indent=1))
            (out / "run.json").write_text(json.dumps({**run, "steps_run": step, "seconds": record["seconds"]},
                                                     indent=1))
            t_mark = time.perf_counter()
        if done:
            break
    print(json.dumps({"kind": "done", "steps": step, "best_step": run["best_step"], "best_aji": run["best_aji"],
                      "train_s": round(t_train, 1), "data_wait_s": round(data_wait, 1),
                      "validation_s": round(t_val, 1), "total_s": round(time.perf_counter() - t_start, 1)}),
          flush=True)


if __name__ == "__main__":
    main()
