"""`TileStore`: the tile predictions of one plan, each computed once and kept while a later block needs it.

Every tile runs in its plan batch with the image's squeeze-excitation gates (`nucseg.inference.calibration`,
measured once before the first tile), so its prediction is the same whichever block asks for it first, and
whether it was kept or computed again: the store only saves work. What it keeps is bounded (`max_bytes`; beyond
that the oldest tiles are dropped and computed again if asked for).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from nucseg.inference.calibration import image_network
from nucseg.inference.forward import Predictor, predict_batch
from nucseg.progress import Progress

if TYPE_CHECKING:
    from nucseg.inference.plan import PredictionPlan

#: tile predictions kept for later blocks (a frontier one tile deep along the block border being written)
TILE_CACHE_BYTES = 1 << 30
#: batches whose pixels are read ahead of the network
PREFETCH = 2


@dataclasses.dataclass(frozen=True)
class TilePart:
    """A tile's (C, h, w) prediction, or the part of it starting at `offset` (y, x) within the tile."""

    values: np.ndarray
    offset: tuple[int, int] = (0, 0)


class TileStore:
    """Tile predictions of `plan` with `predictor`.

    Args:
        plan: the run's plan.
        predictor: the network.
        max_bytes: most bytes of predictions kept for later blocks.
    """

    def __init__(self, plan: PredictionPlan, predictor: Predictor, *, max_bytes: int = TILE_CACHE_BYTES):
        self.plan, self.predictor = plan, predictor
        self.max_bytes = max_bytes
        self._tiles: OrderedDict[int, TilePart] = OrderedDict()
        self._users: dict[int, list[int]] = {}  # tile -> the blocks that need it, in order
        for b in plan.blocks:
            for i in b.tile_ids:
                self._users.setdefault(i, []).append(b.index)
        self._net: Any = None
        self._bytes = 0
        self.computed = 0  # tiles run through the network (for tests and benchmarks)
        self.calibrations = 0  # gate measurements (at most one per image and network, see image_network)

    @property
    def has_gates(self) -> bool:
        return self._net is not None

    def network(self) -> Any:
        """The network with the image's squeeze-excitation gates (measured on first call, or kept from an
        earlier run on the same image object)."""
        if self._net is None:
            p = self.predictor
            self._net = image_network(p.net, self.plan.source, self.plan.gate_windows, p.spec, p.device)
            self.calibrations += 1
        return self._net

    def iter_predictions(
        self, ids: tuple[int, ...], block: int, stop: threading.Event | None = None
    ) -> Generator[Progress, None, tuple[dict[int, TilePart], int, bool]]:
        """The predictions of tiles `ids`, needed by block `block`: a whole (C, t, t) tile's, or for a tile kept
        from an earlier block the part of it this block reads (`TilePart`).

        Yields `Progress` "calibrating" before measuring the gates and "predicting" after each batch (done: tiles
        run so far; total: the tiles not kept from earlier blocks); returns ({tile: part}, tiles run, stopped). On
        Stop the tiles not run are missing.
        """
        plan, p = self.plan, self.predictor
        tta = plan.config.tta
        have = {i: self._tiles[i] for i in ids if i in self._tiles}
        wanted = set(ids)
        run, stopped = 0, False
        todo = sorted({plan.batch_of[i] for i in ids if i not in have})
        to_run = sum(len(plan.batches[k]) for k in todo)
        if todo and not self.has_gates:
            yield Progress(run, to_run, "calibrating")
        # reading runs PREFETCH batches ahead in a thread (decoding a slide's JPEG tiles releases the GIL), so the
        # network does not wait for pixels; every read goes through that one thread (readers need not be
        # thread-safe)
        reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nucseg-read")
        ahead = [reader.submit(self._pixels, plan.batches[k]) for k in todo[:PREFETCH]]
        try:
            net = self.network() if todo else None
            for n, k in enumerate(todo):
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                if n + PREFETCH < len(todo):
                    ahead.append(reader.submit(self._pixels, plan.batches[todo[n + PREFETCH]]))
                batch = plan.batches[k]
                preds = predict_batch(net, ahead[n].result(), p.spec, p.device, tta=tta)
                self._store(batch, preds, wanted, have, block)
                run += len(batch)
                self.computed += len(batch)
                yield Progress(run, to_run, "predicting")
        finally:
            for future in ahead:
                future.cancel()
            reader.shutdown(wait=True)
        return have, run, stopped

    def _store(self, batch: tuple[int, ...], preds: np.ndarray, wanted: set[int], have: dict[int, TilePart],
               block: int) -> None:
        """Hand the predictions to the asking block, and keep those a later block needs."""
        for i, pred in zip(batch, preds):
            if i in wanted:
                have[i] = TilePart(pred)
            if self.plan.last_use[i] > block:
                self._keep(i, pred, block)

    def release(self, block: int) -> None:
        """Forget tiles no block after `block` needs."""
        for i in [i for i in self._tiles if self.plan.last_use[i] <= block]:
            self._bytes -= self._tiles.pop(i).values.nbytes

    def _keep(self, i: int, pred: np.ndarray, block: int) -> None:
        """Keep, of tile `i`'s prediction, the part that the read boxes of the blocks after `block` cover (a copy,
        so the batch it came in is freed): a tile on a block row's border is kept for the row below, which reads
        only its lower part (the same values: the blend is unchanged)."""
        if i in self._tiles:
            return
        t = self.plan.tiles[i]
        y0, x0, y1, x1 = t.y1, t.x1, t.y0, t.x0
        for b in self._users.get(i, ()):
            if b > block:
                ry, rx, rh, rw = self.plan.blocks[b].read
                y0, x0 = min(y0, max(ry, t.y0)), min(x0, max(rx, t.x0))
                y1, x1 = max(y1, min(ry + rh, t.y1)), max(x1, min(rx + rw, t.x1))
        if y1 <= y0 or x1 <= x0:
            return
        part = TilePart(pred[:, y0 - t.y0 : y1 - t.y0, x0 - t.x0 : x1 - t.x0].copy(), (y0 - t.y0, x0 - t.x0))
        self._tiles[i] = part
        self._bytes += part.values.nbytes
        while self._bytes > self.max_bytes and self._tiles:
            self._bytes -= self._tiles.popitem(last=False)[1].values.nbytes

    def _pixels(self, batch: tuple[int, ...]) -> np.ndarray:
        """(B, t, t, 3) pixels of a batch: one read of their bounding box, cut into tiles."""
        tiles = [self.plan.tiles[i] for i in batch]
        y0, x0 = min(t.y0 for t in tiles), min(t.x0 for t in tiles)
        y1, x1 = max(t.y1 for t in tiles), max(t.x1 for t in tiles)
        pixels = self.plan.source.read(y0, x0, y1 - y0, x1 - x0)
        return np.stack([pixels[t.y0 - y0 : t.y1 - y0, t.x0 - x0 : t.x1 - x0] for t in tiles])
