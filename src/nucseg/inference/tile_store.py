"""`TileStore`: the tile predictions of one plan, each computed once and kept while a later block needs it.

A tile runs in its plan batch with its owner block's squeeze-excitation gates (`nucseg.inference.plan`), so its
prediction is the same whichever block asks for it first, and whether it was kept or computed again: the store
only saves work. What it keeps is bounded (`max_bytes`; beyond that the oldest tiles are dropped and computed again
if asked for), and so are the gated copies of the network (`max_gated`; a dropped one is measured again).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import OrderedDict
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from nucseg.inference.calibration import CALIBRATION_SIZE, with_image_gates
from nucseg.inference.forward import Predictor, predict_batch

if TYPE_CHECKING:
    from nucseg.inference.plan import PredictionPlan

#: tile predictions kept for later blocks (a frontier one tile deep along the block border being written)
TILE_CACHE_BYTES = 1 << 30
#: batches whose pixels are read ahead of the network
PREFETCH = 2


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

    def gates(self, owner: int, pixels: np.ndarray | None = None) -> tuple[Any, np.ndarray | None]:
        """The network with block `owner`'s gates, and its probabilities for the window (None without gates);
        `pixels`: the window's, when already read."""
        if owner in self._gated:
            self._gated.move_to_end(owner)
            return self._gated[owner]
        if pixels is None:
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
        todo = sorted({plan.batch_of[i] for i in ids if i not in have})
        # reading runs PREFETCH batches ahead in a thread (decoding a slide's JPEG tiles releases the GIL), so the
        # network does not wait for pixels; every read goes through that one thread (readers need not be
        # thread-safe)
        reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nucseg-read")
        ahead = [reader.submit(self._inputs, k) for k in todo[:PREFETCH]]
        try:
            for n, k in enumerate(todo):
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                if n + PREFETCH < len(todo):
                    ahead.append(reader.submit(self._inputs, todo[n + PREFETCH]))
                batch = plan.batches[k]
                owner = plan.owner[batch[0]]
                window_pixels, pixels = ahead[n].result()
                if not self.has_gates(owner):
                    yield "calibrating", run
                    if window_pixels is None:  # its gates were kept when read ahead, and dropped since
                        window_pixels = reader.submit(self._window, owner).result()
                net, window_probs = self.gates(owner, window_pixels)
                if window_probs is not None and not tta and len(batch) == 1 and plan.window_tile(owner) == batch[0]:
                    preds = window_probs[None]  # the calibration pass was this tile's prediction
                else:
                    preds = predict_batch(net, pixels, p.spec, p.device, tta=tta)
                self._store(batch, preds, wanted, have, block)
                run += len(batch)
                self.computed += len(batch)
                yield "predicting", run
        finally:
            for future in ahead:
                future.cancel()
            reader.shutdown(wait=True)
        return have, run, stopped

    def _inputs(self, k: int) -> tuple[np.ndarray | None, np.ndarray]:
        """The pixels batch `k` needs: its owner's calibration window (unless its gates are kept) and its tiles.
        The window tile's own pixels are the window's."""
        batch = self.plan.batches[k]
        owner = self.plan.owner[batch[0]]
        return (None if self.has_gates(owner) else self._window(owner)), self._pixels(batch)

    def _window(self, owner: int) -> np.ndarray:
        y, x = self.plan.blocks[owner].window
        return self.plan.source.read(y, x, CALIBRATION_SIZE, CALIBRATION_SIZE)

    def _store(self, batch: tuple[int, ...], preds: np.ndarray, wanted: set[int], have: dict[int, np.ndarray],
               block: int) -> None:
        """Hand the predictions to the asking block, and keep those a later block needs."""
        for i, pred in zip(batch, preds):
            if i in wanted:
                have[i] = pred
            if self.plan.last_use[i] > block:
                self._keep(i, pred)

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
