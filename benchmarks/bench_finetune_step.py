"""Where a fine-tuning step's time goes, and what OpenMP's waiting and a leaner decoder change (issue 20, item 6).

    python benchmarks/bench_finetune_step.py [--rounds 2] [--steps 4] [--threads 2]

One training step as `iter_finetune` runs it (8 patches of 256 px drawn from MoNuSeg tiles with the replay mix,
forward, loss, backward, Adam), clocked by phase, in a fresh process per variant, the variants taking turns
round after round so that a busy spell of a shared machine hits all of them:

* `v2 spinning`: the default model with OpenMP's default waits (threads spin at every barrier);
* `v2 passive`: the same with ``OMP_WAIT_POLICY=PASSIVE`` (what `nucseg.models.device.passive_thread_waits`
  asks for before torch is imported: the CLI and the plugin do);
* `lean passive`: the decoder model version 3 trains, (64, 32, 16, 16, 8), untrained weights (the clock does not
  depend on them).

Printed: the median step (wall seconds, CPU seconds of all threads, and the phases), the paired ratios, and the
load. On a machine shared with other work the wall time depends on the load; CPU seconds / threads is what the
step needs of free cores (a lower bound: it assumes the threads never wait for each other).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

from _common import MONUSEG, emit

LEAN = (64, 32, 16, 16, 8)
VARIANTS = {"v2 spinning": ("default", None), "v2 passive": ("default", "PASSIVE"), "lean passive": ("lean", "PASSIVE")}


def worker(model: str, steps: int, threads: int) -> None:
    """Run `steps` training steps and print their phases as JSON (in a fresh process)."""
    import numpy as np
    import torch

    from nucseg.inference.forward import normalise
    from nucseg.models.build import build_network, load_weights
    from nucseg.models.registry import resolve_model
    from nucseg.training.dataset import PatchSampler, load_pairs
    from nucseg.training.finetune import load_replay
    from nucseg.training.losses import nucseg_loss

    torch.set_num_threads(threads)
    spec = resolve_model("nucseg-default")
    replay = load_replay(spec, 0.5)
    if model == "lean":
        spec = dataclasses.replace(spec, decoder_channels=LEAN, folder=None)
    net = build_network(spec)
    if spec.trained:
        load_weights(net, spec)
    net.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    names = sorted(p.stem for p in (MONUSEG / "images").glob("*.png"))[:3]
    pairs = load_pairs(MONUSEG / "images", MONUSEG / "labels", names=names)
    sampler = PatchSampler(pairs, 256, ("flips", "rot90", "stain", "color"), extra=(replay, 0.5))
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        images, targets = sampler.sample_batch(rng, 8)
        x = normalise(torch.from_numpy(images), spec).contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        logits = net(x)
        t2 = time.perf_counter()
        loss = nucseg_loss(logits.float(), torch.from_numpy(targets))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        rows.append({"step": t4 - t0, "cpu": time.process_time() - c0, "sample": t1 - t0, "forward": t2 - t1,
                     "backward": t3 - t2, "adam": t4 - t3})
    print(json.dumps({"rows": rows[1:] or rows, "load": os.getloadavg()[0]}))  # the first step pays for set-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="steps per process (the first is not counted)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=("default", "lean"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.threads)
        return
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    loads = []
    for _ in range(args.rounds):
        for name, (model, wait) in VARIANTS.items():
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if wait:
                env["OMP_WAIT_POLICY"] = wait
            out = subprocess.run([sys.executable, __file__, "--worker", model, "--steps", str(args.steps),
                                  "--threads", str(args.threads)], env=env, capture_output=True, text=True,
                                 check=True).stdout
            record = json.loads(out.strip().splitlines()[-1])
            runs[name].append(record)
            loads.append(record["load"])
    result = {"threads": args.threads, "load": [round(min(loads), 1), round(max(loads), 1)]}
    for name, records in runs.items():
        rows = [row for record in records for row in record["rows"]]
        result[name] = {key: round(statistics.median(r[key] for r in rows), 3)
                        for key in ("step", "cpu", "sample", "forward", "backward", "adam")}
        per_round = [statistics.median(r["step"] for r in record["rows"]) for record in records]
        result[name]["per_round"] = [round(v, 2) for v in per_round]

    def paired(num: str, den: str) -> float:
        a, b = result[num]["per_round"], result[den]["per_round"]
        return round(statistics.median(x / y for x, y in zip(a, b)), 2)

    result["spinning_over_passive"] = paired("v2 spinning", "v2 passive")
    result["v2_over_lean"] = paired("v2 passive", "lean passive")
    for name in VARIANTS:
        r = result[name]
        print(f"{name:13s} step {r['step']:7.2f} s (CPU {r['cpu']:6.2f} s: {r['cpu'] / args.threads:5.2f} s of "
              f"{args.threads} free cores)  sample {r['sample']:.2f}  forward {r['forward']:.2f}  backward "
              f"{r['backward']:.2f}  Adam {r['adam']:.2f}")
    print(f"paired: spinning / passive {result['spinning_over_passive']}x, v2 / lean decoder "
          f"{result['v2_over_lean']}x; load {result['load'][0]}-{result['load'][1]} on {os.cpu_count()} cores")
    emit("finetune_step", result)


if __name__ == "__main__":
    main()
