"""`TileStore`: the tile predictions of one plan, each computed once and kept while a later block needs it.

A tile runs in its plan batch with its owner block's squeeze-excitation gates (`nucseg.inference.plan`), so its
prediction is the same whichever block asks for it first, and whether it was kept or computed again: the store
only saves work. What it keeps is bounded (`max_bytes`; beyond that the oldest tiles are dropped and computed again
if asked for), and so are the gated copies of the network (`max_gated`; a dropped one is measured again).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from nucseg.inference.calibration import CALIBRATION_SIZE, with_image_gates
from nucseg.inference.forward import predict_batch

if TYPE_CHECKING:
    from nucseg.inference.blocks import Predictor
    from nucseg.inference.plan import PredictionPlan

#: tile predictions kept for later blocks (a frontier one tile deep along the block border being written)
TILE_CACHE_BYTES = 1 << 30


class TileStore:
    """Tile predictions of `plan` with `predictor`.

    Args:
        plan: the run's plan.
        predictor: the network.
        max_bytes: most bytes of predictions kept for later blocks.
        max_gated: most gated copies of the network kept.
    """

    def __init__(self, plan: PredictionPlan, predictor: Predictor, *, max_bytes: int = TILE_CACHE_BYTES,
                 max_gated: int = 4):
        self.plan, self.predictor = plan, predictor
        self.max_bytes, self.max_gated = max_bytes, max_gated
        self._tiles: OrderedDict[int, np.ndarray] = OrderedDict()
        self._gated: OrderedDict[int, tuple[Any, np.ndarray | None]] = OrderedDict()
        self._bytes = 0
        self.computed = 0  # tiles run through the network (for tests and benchmarks)
        self.calibrations = 0

    def gates(self, owner: int) -> tuple[Any, np.ndarray | None]:
        """The network with block `owner`'s gates, and its probabilities for the window (None without gates)."""
        if owner in self._gated:
            self._gated.move_to_end(owner)
            return self._gated[owner]
        y, x = self.plan.blocks[owner].window
        pixels = self.plan.source.read(y, x, CALIBRATION_SIZE, CALIBRATION_SIZE)
        p = self.predictor
        self._gated[owner] = with_image_gates(p.net, pixels, p.spec, p.device)
        self.calibrations += 1
        while len(self._gated) > self.max_gated:
            self._gated.popitem(last=False)
        return self._gated[owner]

    def has_gates(self, owner: int) -> bool:
        return owner in self._gated

    def iter_predictions(
        self, ids: tuple[int, ...], block: int, stop: threading.Event | None = None
    ) -> Generator[tuple[str, int], None, tuple[dict[int, np.ndarray], int, bool]]:
        """The (C, t, t) predictions of tiles `ids`, needed by block `block`.

        Yields ("calibrating", n) before measuring gates and ("predicting", n) after each batch, n = tiles run so
        far; returns ({tile: prediction}, tiles run, stopped). On Stop the tiles not run are missing.
        """
        plan, p = self.plan, self.predictor
        tta = plan.config.tta
        have = {i: self._tiles[i] for i in ids if i in self._tiles}
        wanted = set(ids)
        run, stopped = 0, False
        for k in sorted({plan.batch_of[i] for i in ids if i not in have}):
            if stop is not None and stop.is_set():
                stopped = True
                break
            batch = plan.batches[k]
            owner = plan.owner[batch[0]]
            if not self.has_gates(owner):
                yield "calibrating", run
            net, window_probs = self.gates(owner)
            if window_probs is not None and not tta and len(batch) == 1 and plan.window_tile(owner) == batch[0]:
                preds = window_probs[None]  # the calibration pass was this tile's prediction
            else:
                preds = predict_batch(net, self._pixels(batch), p.spec, p.device, tta=tta)
            for i, pred in zip(batch, preds):
                if i in wanted:
                    have[i] = pred
                if plan.last_use[i] > block:
                    self._keep(i, pred)
            run += len(batch)
            self.computed += len(batch)
            yield "predicting", run
        return have, run, stopped

    def release(self, block: int) -> None:
        """Forget tiles no block after `block` needs."""
        for i in [i for i in self._tiles if self.plan.last_use[i] <= block]:
            self._bytes -= self._tiles.pop(i).nbytes

    def _keep(self, i: int, pred: np.ndarray) -> None:
        if i in self._tiles:
            return
        self._tiles[i] = pred
        self._bytes += pred.nbytes
        while self._bytes > self.max_bytes and self._tiles:
            self._bytes -= self._tiles.popitem(last=False)[1].nbytes

    def _pixels(self, batch: tuple[int, ...]) -> np.ndarray:
        """(B, t, t, 3) pixels of a batch: one read of their bounding box, cut into tiles."""
        tiles = [self.plan.tiles[i] for i in batch]
        y0, x0 = min(t.y0 for t in tiles), min(t.x0 for t in tiles)
        y1, x1 = max(t.y1 for t in tiles), max(t.x1 for t in tiles)
        pixels = self.plan.source.read(y0, x0, y1 - y0, x1 - x0)
        return np.stack([pixels[t.y0 - y0 : t.y1 - y0, t.x0 - x0 : t.x1 - x0] for t in tiles])
