"""How many actions a reviewer needs to bring a prediction to AJI 0.90: the correction tools vs brush / eraser only.

A simulated reviewer corrects the default model's prediction of each of the five MoNuSeg validation tiles
(scripts/train_default.py VALIDATION; the model never trained on them) towards the truth, one action at a time,
until AJI >= 0.90 (or nothing left helps). Two regimes:

* tools: add a missed nucleus (one click: `nucseg.editing.grow` on the prediction's own cached maps, the tool
  the dock runs), delete a false one (one click), merge two (one action), split one (one action, two seeds),
  and the brush / eraser;
* brush: brush / eraser only.

The stroke model is ideal, in the brush's favour: its strokes paint exactly the truth's pixels, so a nucleus painted
by hand needs no outline repair, while a nucleus added by a click has the model's outline and may need some.

Stroke model (brush and eraser): the brush is napari's default, 10 px across. One stroke paints or erases one
band 10 px wide along a drag; painting (or erasing) a connected set of pixels takes as many strokes as 10-px
bands across its shorter side: ``max(1, ceil(minor axis length / 10))`` (scikit-image's ellipse minor axis),
summed over its connected parts. The strokes are ideal: they paint exactly the truth's pixels.

Reviewer: every step it lists the errors against the truth (AJI's pairing: each truth nucleus with the prediction
of highest IoU): a prediction paired with no truth (delete / erase), a truth served below IoU 0.5 (add / paint it,
or split the prediction it shares with another truth, or merge the predictions it is cut into), a pair between
IoU 0.5 and 0.9 (fix the outline with brush and eraser). It ranks them by estimated AJI gain per action and tries
them in that order. The brush's outcome is foreseen (no stroke is spent on what does not help); a tool's is not:
a click whose nucleus does not look right (IoU with the truth nucleus under 0.7; for a split, either part) or that
lowers AJI is undone, which costs the click and the undo (2 actions), and that error is then painted by hand.
The reviewer learns: it tries add or split only while that tool's success rate so far (one success and one failure
counted before the first try) makes a try cheaper on average than painting (rate > 2 / (1 + strokes to paint)).
Actions are counted until AJI first reaches the target (0.90; the AJI after every action is recorded too).

    PYTHONPATH=src python benchmarks/bench_correction.py [--tiles N] [--target 0.90] [--looks-right 0.7]
        [--always-try] [--max-actions 4000]

The prediction's maps are computed once (the default model, the engine's default tiling, model's thresholds) and
kept in benchmarks/results/correction_cache. Prints a table and writes a JSON line per tile and in all.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import MONUSEG, RESULTS, default_model_name, emit  # noqa: E402

BRUSH_PX = 10  # napari's default brush size
#: a nucleus a tool drew "looks right" to the reviewer when it overlaps the truth nucleus with at least this IoU
LOOKS_RIGHT = 0.7
#: try add / split on every error they fit, without learning whether they pay (--always-try)
ALWAYS_TRY = False
#: AJI levels on the way whose action counts are reported too
MILESTONES = (0.75, 0.80, 0.85)
CACHE = RESULTS / "correction_cache"


# -- the truth-side bookkeeping: AJI from a sparse overlap table, updated by each edit ---------------------------
class AjiTable:
    """AJI of labels against a truth, kept up to date edit by edit (as `nucseg.metrics.matching.aji`)."""

    def __init__(self, truth: np.ndarray, labels: np.ndarray):
        self.truth = truth
        self.t_area = np.bincount(truth.ravel()).astype(np.int64)
        self.p_area: dict[int, int] = {}
        self.ov: dict[int, dict[int, int]] = {}
        self.pov: dict[int, dict[int, int]] = {}
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        self.p_area = {int(i): int(c) for i, c in zip(ids, counts)}
        both = (truth > 0) & (labels > 0)
        pairs, counts = np.unique(np.stack([truth[both], labels[both]]), axis=1, return_counts=True)
        for (t, p), n in zip(pairs.T, counts):
            self._add(int(t), int(p), int(n))

    def _add(self, t: int, p: int, n: int) -> None:
        row = self.ov.setdefault(t, {})
        row[p] = row.get(p, 0) + n
        col = self.pov.setdefault(p, {})
        col[t] = col.get(t, 0) + n
        if row[p] == 0:
            del row[p], col[t]
            if not row:
                del self.ov[t]
            if not col:
                del self.pov[p]

    def change(self, indices: np.ndarray, old: np.ndarray, new: np.ndarray, sign: int = 1) -> None:
        """Apply (sign 1) or revert (sign -1) the change of `indices` from `old` to `new` ids."""
        t = self.truth.reshape(-1)[indices]
        for ids, s in ((old, -sign), (new, sign)):
            u, c = np.unique(ids[ids > 0], return_counts=True)
            for p, n in zip(u, c):
                self.p_area[int(p)] = self.p_area.get(int(p), 0) + s * int(n)
                if self.p_area[int(p)] == 0:
                    del self.p_area[int(p)]
            keep = (ids > 0) & (t > 0)
            if keep.any():
                pairs, counts = np.unique(np.stack([t[keep], ids[keep]]), axis=1, return_counts=True)
                for (tt, p), n in zip(pairs.T, counts):
                    self._add(int(tt), int(p), s * int(n))

    def pairing(self) -> tuple[dict[int, tuple[int, int, float]], float]:
        """Each truth's best prediction (id, intersection, IoU), and AJI."""
        best: dict[int, tuple[int, int, float]] = {}
        c = u = 0
        used: set[int] = set()
        for t, row in self.ov.items():
            ta = int(self.t_area[t])
            choice = max(row.items(), key=lambda kv: (kv[1] / (ta + self.p_area[kv[0]] - kv[1]), -kv[0]))
            p, n = choice
            union = ta + self.p_area[p] - n
            best[t] = (p, n, n / union)
            c += n
            u += union
            used.add(p)
        ids = getattr(self, "truth_ids", None)
        if ids is None:
            ids = np.flatnonzero(self.t_area[1:]) + 1
        unpaired = [int(t) for t in ids if int(t) not in self.ov]
        u += int(self.t_area[unpaired].sum()) + sum(a for p, a in self.p_area.items() if p not in used)
        return best, (c / u if u else 1.0)

    def aji_after(self, indices: np.ndarray, old: np.ndarray, new: np.ndarray) -> float:
        self.change(indices, old, new, 1)
        _, value = self.pairing()
        self.change(indices, old, new, -1)
        return value


# -- the stroke model ------------------------------------------------------------------------------------------
def strokes(mask: np.ndarray) -> int:
    """Brush strokes to paint (or erase) `mask`: 10-px bands across the shorter side of each connected part."""
    from skimage.measure import regionprops

    if not mask.any():
        return 0
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    parts, _ = ndi.label(box, ndi.generate_binary_structure(2, 2))
    return sum(max(1, math.ceil(r.axis_minor_length / BRUSH_PX)) for r in regionprops(parts))


# -- candidate actions -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Action:
    kind: str            # add, delete, merge, split (tools) / paint, erase, repaint, outline (brush)
    key: tuple           # the error it fixes (for marking a failed tool)
    estimate: float      # estimated AJI gain
    make: object         # () -> (indices, new values), or raises EditRefused
    tool: bool           # a one-click tool whose outcome the reviewer cannot foresee (add, split)
    cost_of: object      # (indices, new values) -> actions
    truths: tuple = ()   # the truth nuclei the result must fit (add: one; split: both parts)


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of `mask` farthest from its border (where a person clicks)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = np.pad(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    y, x = np.unravel_index(np.argmax(ndi.distance_transform_edt(box)), box.shape)
    return int(y - 1 + rows[0]), int(x - 1 + cols[0])


class Reviewer:
    def __init__(self, truth, labels, maps, postprocess, use_tools: bool):
        from nucseg.editing.history import LabelEditor

        self.truth, self.labels, self.use_tools = truth, labels, use_tools
        self.maps = maps
        self.postprocess = postprocess
        self.editor = LabelEditor(labels)
        self.table = AjiTable(truth, labels)
        self.failed: set[tuple] = set()
        self.record: dict[str, tuple[int, int]] = {}  # tool -> (successes, failures), with one of each to start
        self.actions = 0
        self.counts: dict[str, int] = {}
        self._boxes = {int(i + 1): sl for i, sl in enumerate(ndi.find_objects(truth)) if sl is not None}
        self.table.truth_ids = np.array(sorted(self._boxes))

    def t_mask(self, t: int) -> tuple[tuple[slice, slice], np.ndarray]:
        sl = self._boxes[t]
        sl = tuple(slice(max(s.start - 6, 0), s.stop + 6) for s in sl)
        return sl, self.truth[sl] == t

    def _flat(self, sl, local: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(local)
        return np.ravel_multi_index((ys + sl[0].start, xs + sl[1].start), self.labels.shape).astype(np.int64)

    def pred_pixels(self, p: int) -> np.ndarray:
        return np.flatnonzero(self.labels.reshape(-1) == p).astype(np.int64)

    # each make() returns (indices, new values)
    def candidates(self, best, aji) -> list[Action]:
        out: list[Action] = []
        L = self.labels
        used = {p for p, _, _ in best.values()}
        brush_cost = lambda idx, new: strokes_of(L, idx, new)  # noqa: E731
        one = lambda idx, new: 1  # noqa: E731
        for p, area in self.table.p_area.items():
            if p in used:
                continue
            key = ("fp", p)
            if self.use_tools:
                out.append(Action("delete", key, area, lambda p=p: (self.pred_pixels(p), 0), False, one))
            out.append(Action("erase", key, area, lambda p=p: (self.pred_pixels(p), 0), False, brush_cost))
        for t in range(1, len(self.table.t_area)):
            ta = int(self.table.t_area[t])
            if not ta:
                continue
            p, n, iou = best.get(t, (0, 0, 0.0))
            if iou >= 0.9:
                continue
            sl, tm = self.t_mask(t)
            gain = ta - n
            row = self.table.ov.get(t, {})
            if iou >= 0.5:  # matched: the outline
                out.append(Action("outline", ("outline", t), gain, lambda t=t, p=p: self.outline(t, p), False,
                                  brush_cost))
                continue
            covering = sorted(((m, q) for q, m in row.items()), reverse=True)
            shared = []  # predictions covering most of t and much of another truth
            for m, q in covering:
                others = [(mm, tt) for tt, mm in self.table.pov.get(q, {}).items() if tt != t]
                if m >= 0.5 * ta and others and max(others)[0] >= 0.3 * self.table.p_area[q]:
                    shared.append((q, max(others)[1]))
            parts = [(m, q) for m, q in covering if m >= 0.2 * ta]
            if shared:  # under-segmented: split the prediction it shares with another truth
                q, other = shared[0]
                if self.use_tools and ("split", t) not in self.failed and self.worth_trying("split", tm):
                    out.append(Action("split", ("split", t), gain, lambda t=t, q=q, o=other: self.split(t, q, o),
                                      True, one, (t, other)))
                out.append(Action("repaint", ("split", t), gain, lambda t=t, q=q: self.repaint_part(t, q), False,
                                  brush_cost))
            elif len(parts) >= 2:  # over-segmented: merge the two largest pieces
                q1, q2 = parts[0][1], parts[1][1]
                if self.use_tools and ("merge", t) not in self.failed:
                    out.append(Action("merge", ("merge", t), gain, lambda t=t, a=q1, b=q2: self.merge(t, a, b),
                                      False, one))
                out.append(Action("repaint", ("merge", t), gain,
                                  lambda a=q1, b=q2: (self.pred_pixels(b), a), False, brush_cost))
            # the last resort: paint the whole nucleus over whatever covers it (a new label, preserve labels off)
            out.append(Action("overpaint", ("overpaint", t), gain * 0.5,
                              lambda sl=sl, tm=tm: (self._flat(sl, tm), self.editor.next_id()), False, brush_cost))
            free = tm & (L[sl] == 0)
            if free.sum() >= 0.3 * ta:  # missed (or mostly): add it
                if self.use_tools and ("add", t) not in self.failed and self.worth_trying("add", free):
                    out.append(Action("add", ("add", t), gain, lambda t=t: self.add(t), True, one, (t,)))
                out.append(Action("paint", ("add", t), gain,
                                  lambda sl=sl, free=free: (self._flat(sl, free), self.editor.next_id()), False,
                                  brush_cost))
        return out

    def worth_trying(self, kind: str, mask: np.ndarray) -> bool:
        """A click is worth trying when, at the tool's success rate so far (one success and one failure counted
        before the first try), it costs less on average than painting: a success costs 1, a failure 2 (the click
        and its undo) plus the painting; so try when rate > 2 / (1 + strokes to paint)."""
        if ALWAYS_TRY:
            return True
        ok, bad = self.record.get(kind, (1, 1))
        return ok / (ok + bad) > 2 / (1 + strokes(mask))

    def outline(self, t: int, p: int):
        sl, tm = self.t_mask(t)
        local = self.labels[sl]
        add = tm & (local == 0)
        remove = (local == p) & ~tm
        outside = np.flatnonzero(self.labels.reshape(-1) == p) if self._leaks(sl, p) else None
        idx = np.concatenate([self._flat(sl, add), self._flat(sl, remove)])
        new = np.concatenate([np.full(int(add.sum()), p), np.zeros(int(remove.sum()), np.int64)])
        if outside is not None:  # the prediction reaches beyond the truth's box: erase the rest too
            tflat = self.truth.reshape(-1)[outside]
            extra = outside[tflat != t]
            extra = np.setdiff1d(extra, idx)
            idx, new = np.concatenate([idx, extra]), np.concatenate([new, np.zeros(extra.size, np.int64)])
        return idx, new

    def _leaks(self, sl, p) -> bool:
        return int((self.labels[sl] == p).sum()) < self.table.p_area.get(p, 0)

    def repaint_part(self, t: int, q: int):
        sl, tm = self.t_mask(t)
        part = tm & (self.labels[sl] == q)
        return self._flat(sl, part), self.editor.next_id()

    def split(self, t: int, q: int, other: int):
        from nucseg.editing import tools

        a = interior_point((self.truth == t) & (self.labels == q))
        b = interior_point((self.truth == other) & (self.labels == q))
        return edit_of(tools.split_by_seeds(self.labels, [a, b], self.editor.next_id()))

    def merge(self, t: int, a: int, b: int):
        from nucseg.editing import tools

        pa = interior_point((self.labels == a) & (self.truth == t))
        pb = interior_point((self.labels == b) & (self.truth == t))
        return edit_of(tools.merge_nuclei(self.labels, pa, pb))

    def add(self, t: int):
        from nucseg.editing import tools
        from nucseg.editing.grow import disc_around, grow_nucleus, typical_radius

        sl, tm = self.t_mask(t)
        click = interior_point(tm & (self.labels[sl] == 0))
        click = (click[0] + sl[0].start, click[1] + sl[1].start)
        mask = grow_nucleus(self.maps.window(click), click, self.labels.shape)
        if mask is None:
            mask = disc_around(click, typical_radius(self.labels), self.labels.shape)
        return edit_of(tools.add_nucleus(self.labels, mask, click, self.editor.next_id()))

    def step(self) -> float | None:
        """One reviewer action; returns the AJI after it, None when nothing helps any more."""
        from nucseg.editing.tools import Edit, EditRefused

        best, aji = self.table.pairing()
        cands = self.candidates(best, aji)
        # estimated gain per action: a tool costs one; brush work is priced by its strokes once built
        order = sorted(cands, key=lambda a: -a.estimate / (1 if a.tool or a.kind in ("delete", "merge") else 3))
        for action in order[:40]:
            if action.tool and action.key in self.failed:
                continue
            try:
                idx, new = action.make()
            except EditRefused:
                continue
            idx = np.asarray(idx, np.int64)
            new = np.broadcast_to(np.asarray(new, self.labels.dtype), idx.shape).copy()
            old = self.labels.reshape(-1)[idx].copy()
            keep = old != new
            idx, new, old = idx[keep], new[keep], old[keep]
            if not idx.size:
                continue
            after = self.table.aji_after(idx, old, new)
            if after <= aji or (action.tool and not self.looks_right(action, idx, old, new)):
                if action.tool:  # clicked, saw it, undid it
                    ok, bad = self.record.get(action.kind, (1, 1))
                    self.record[action.kind] = (ok, bad + 1)
                    self.actions += 2
                    self.counts["failed " + action.kind] = self.counts.get("failed " + action.kind, 0) + 1
                    self.failed.add(action.key)
                continue
            if action.tool:
                ok, bad = self.record.get(action.kind, (1, 1))
                self.record[action.kind] = (ok + 1, bad)
            cost = action.cost_of(idx, new)
            self.editor.apply(Edit(idx, new, action.kind))
            self.table.change(idx, old, new)
            self.actions += cost
            self.counts[action.kind] = self.counts.get(action.kind, 0) + cost
            return after
        return None


def _looks_right(self, action: Action, idx, old, new) -> bool:
    """What the reviewer sees after a click: every nucleus the tool drew overlaps its truth with IoU >= LOOKS_RIGHT."""
    flat = self.labels.reshape(-1)
    for label, truth_id in zip(np.unique(new[new > 0]), action.truths):
        moved = idx[new == label]
        if action.kind == "split":  # the new part, then the part that kept the id
            pieces = [(moved, action.truths[1]),
                      (np.setdiff1d(np.flatnonzero(flat == old[new == label][0]), moved), action.truths[0])]
        else:
            pieces = [(moved, truth_id)]
        for pixels, t in pieces:
            t_area = int(self.table.t_area[t])
            inter = int((self.truth.reshape(-1)[pixels] == t).sum())
            if inter / (pixels.size + t_area - inter) < LOOKS_RIGHT:
                return False
    return True


Reviewer.looks_right = _looks_right


def edit_of(edit) -> tuple[np.ndarray, np.ndarray]:
    return edit.indices, edit.values


def strokes_of(labels: np.ndarray, idx: np.ndarray, new: np.ndarray) -> int:
    """Strokes for an edit: painted pixels (per new id) and erased pixels, each by the stroke model."""
    shape = labels.shape
    total = 0
    for value in np.unique(new):
        sel = idx[new == value]
        ys, xs = np.unravel_index(sel, shape)
        y0, x0 = ys.min(), xs.min()
        mask = np.zeros((ys.max() - y0 + 1, xs.max() - x0 + 1), bool)
        mask[ys - y0, xs - x0] = True
        total += strokes(mask)
    return total


# -- running -----------------------------------------------------------------------------------------------------
def tile_maps(name: str, model: str) -> np.ndarray:
    """The default model's (3, H, W) maps of a validation tile (cached)."""
    from PIL import Image

    from nucseg.config import InferenceConfig
    from nucseg.inference.predict import predict

    path = CACHE / f"{name}-{model}.npy"
    if path.is_file():
        return np.load(path)
    image = np.asarray(Image.open(MONUSEG / "images" / f"{name}.png").convert("RGB"))
    result = predict(image, InferenceConfig(model=model), mpp=0.25)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(result.probabilities, np.float32))
    return np.asarray(result.probabilities)


def review(truth, labels, maps, postprocess, use_tools, target, max_actions):
    from nucseg.editing.maps import ResultMaps
    from nucseg.metrics.matching import aji

    labels = np.ascontiguousarray(labels.astype(np.uint32))
    reviewer = Reviewer(truth, labels, ResultMaps(maps, labels.shape, postprocess), postprocess, use_tools)
    start = reviewer.table.pairing()[1]
    assert abs(start - aji(truth, labels)) < 1e-9, (start, aji(truth, labels))
    value, curve = start, [(0, round(start, 4))]
    milestones = {m: (0 if start >= m else None) for m in MILESTONES if m < target}
    while value < target and reviewer.actions < max_actions:
        after = reviewer.step()
        if after is None:
            break
        value = after
        curve.append((reviewer.actions, round(value, 4)))
        for m in milestones:
            if milestones[m] is None and value >= m:
                milestones[m] = reviewer.actions
    assert abs(value - aji(truth, labels)) < 1e-9
    reached = value >= target
    return {"aji_start": round(start, 4), "aji_end": round(value, 4), "reached": reached,
            "actions": reviewer.actions if reached else None, "actions_done": reviewer.actions,
            "milestones": {f"{m:.2f}": a for m, a in milestones.items()},
            "by_kind": reviewer.counts, "curve": curve[:: max(1, len(curve) // 40)]}


def main() -> None:
    global LOOKS_RIGHT, ALWAYS_TRY
    from PIL import Image
    from train_default import VALIDATION

    from nucseg.config import PostprocessConfig
    from nucseg.inference.postprocess import probabilities_to_instances
    from nucseg.models.registry import resolve_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=len(VALIDATION))
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--max-actions", type=int, default=4000)
    parser.add_argument("--looks-right", type=float, default=LOOKS_RIGHT,
                        help="IoU with the truth nucleus above which the reviewer keeps what a tool drew")
    parser.add_argument("--always-try", action="store_true", help="try add / split wherever they fit (no learning)")
    args = parser.parse_args()
    LOOKS_RIGHT, ALWAYS_TRY = args.looks_right, args.always_try
    model = default_model_name()
    postprocess = PostprocessConfig(**resolve_model(model).postprocess_defaults)
    rows = []
    for name in VALIDATION[: args.tiles]:
        truth = np.asarray(Image.open(MONUSEG / "labels" / f"{name}.png")).astype(np.int64)
        maps = tile_maps(name, model)
        predicted = probabilities_to_instances(maps, postprocess)
        record = {"tile": name, "nuclei": int(len(np.unique(truth)) - 1), "predicted": int(predicted.max())}
        for regime, use_tools in (("tools", True), ("brush", False)):
            t0 = time.perf_counter()
            record[regime] = review(truth, predicted.copy(), maps, postprocess, use_tools, args.target,
                                    args.max_actions)
            record[regime]["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(record)
        emit("bench_correction", {"model": model, "target": args.target, "brush_px": BRUSH_PX,
                                  "looks_right": LOOKS_RIGHT, "always_try": ALWAYS_TRY, **record})
    print(f"\nactions to reach AJI {args.target:.2f} (model {model}; brush {BRUSH_PX} px, strokes counted; "
          f"a tool's nucleus kept at IoU >= {LOOKS_RIGHT})")
    levels = [f"{m:.2f}" for m in MILESTONES if m < args.target]
    head = "".join(f" {'@' + m:>11s}" for m in levels)
    print(f"{'tile':26s} {'nuclei':>6s} {'AJI':>6s}{head} {'tools':>7s} {'brush':>7s} {'brush/tools':>11s}")
    for r in rows:
        t, b = r["tools"]["actions"], r["brush"]["actions"]
        ratio = f"{b / t:.2f}" if t and b else "-"
        marks = "".join(f" {str(r['tools']['milestones'][m]) + '/' + str(r['brush']['milestones'][m]):>11s}"
                        for m in levels)
        print(f"{r['tile']:26s} {r['nuclei']:6d} {r['tools']['aji_start']:6.3f}{marks} {t or '-':>7} {b or '-':>7} "
              f"{ratio:>11s}")
    tools_total = sum(r["tools"]["actions"] or 0 for r in rows)
    brush_total = sum(r["brush"]["actions"] or 0 for r in rows)
    if all(r["tools"]["reached"] and r["brush"]["reached"] for r in rows):
        print(f"{'all':26s} {'':6s} {'':6s}{' ' * 12 * len(levels)} {tools_total:7d} {brush_total:7d} "
              f"{brush_total / tools_total:11.2f}")
    emit("bench_correction", {"model": model, "target": args.target, "summary": True,
                              "tools_actions": tools_total, "brush_actions": brush_total})


if __name__ == "__main__":
    main()
