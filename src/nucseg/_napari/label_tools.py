"""The correction tools on a labels layer: clicks and keys bound to `nucseg.editing` (the napari side only).

One tool is active at a time, on the active labels layer (a ground-truth layer is never edited):

====== ==== ==========================================================================================
tool   key  what a click does
====== ==== ==========================================================================================
add    A    grows a nucleus where one was missed, from the model's maps around the click
delete D    removes the nucleus clicked
merge  G    click two touching nuclei: the second joins the first
split  S    click twice inside a nucleus, once in each part
cut    K    drag a line across a nucleus: it is cut along the line
brush  P    napari's brush (M picks a new label); eraser E: napari's eraser
====== ==== ==========================================================================================

Ctrl+Z / Ctrl+Shift+Z undo and redo any of them, brush strokes and threshold changes included, in the one
history of the layer (`label_editing`). Every action is one step.

The add tool reads the maps the prediction cached with the layer (`nucseg.editing.maps.ResultMaps`); for labels
the plugin did not predict, it runs the engine on a small window around the click in a worker
(`EngineMaps`, kept for the next click nearby); without an image to run it on, or where the model sees nothing,
it adds a disc of the layer's typical nucleus size and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Labels

from nucseg.editing import tools
from nucseg.editing.grow import MapWindow, disc_around, grow_nucleus, typical_radius
from nucseg.editing.maps import EngineMaps, ResultMaps
from nucseg.errors import NucsegError

from ._workers import error_message, start_generator_worker
from .label_editing import LayerEditing, editing_for
from .layer_roles import OVERLAY, REVIEWED, TRUTH, layer_role

#: (tool, key, button text, what to do) in the dock's order
TOOLS = (
    ("add", "A", "Add", "click where a nucleus was missed: it is grown from the model's maps"),
    ("delete", "D", "Delete", "click a nucleus to remove it"),
    ("merge", "G", "Merge", "click two touching nuclei: the second joins the first"),
    ("split", "S", "Split", "click twice inside a nucleus, once in each part"),
    ("cut", "K", "Cut", "drag a line across a nucleus to cut it in two there"),
    ("brush", "P", "Brush", "paint with the selected label (M: a new label; [ and ]: brush size)"),
    ("eraser", "E", "Eraser", "erase with the brush"),
)
KEYS = {name: key for name, key, *_ in TOOLS}
#: a press and release closer than this many screen-data pixels is a click, not a drag
CLICK_PX = 3.0
_NAPARI_MODES = {"brush": "paint", "eraser": "erase"}


def editable_labels(layer: Any) -> bool:
    """Whether the tools may edit `layer`: a 2-D labels layer in memory that is not a truth, overlay or
    reviewed-regions layer."""
    return (isinstance(layer, Labels) and layer_role(layer) not in (TRUTH, OVERLAY, REVIEWED)
            and not getattr(layer, "multiscale", False) and isinstance(layer.data, np.ndarray) and layer.ndim == 2)


class CorrectionTools:
    """The active tool and its pending clicks, bound to one labels layer at a time.

    Args:
        viewer: the napari viewer.
        report: called with one line after every action or refusal (the dock's status line).
        image_for: returns the image layer of a labels layer (for the add tool's engine windows), or None.
    """

    def __init__(self, viewer: Any, report: Callable[[str], None], image_for: Callable[[Any], Any]):
        self.viewer = viewer
        self.report = report
        self.image_for = image_for
        self.layer: Labels | None = None
        self.tool: str | None = None
        self.pending: list[tuple[float, float]] = []
        self.worker: Any = None
        self.on_tool_changed: list[Callable[[str | None], None]] = []

    # -- binding -----------------------------------------------------------------------------------------
    def bind(self, layer: Labels | None) -> None:
        """Bind the tools to `layer` (its clicks and keys); None unbinds."""
        if layer is self.layer:
            return
        self._unbind()
        if layer is None or not editable_labels(layer):
            self.layer = None
            return
        try:
            editing_for(layer)
        except NucsegError as err:
            self.report(error_message(err))
            self.layer = None
            return
        self.layer = layer
        layer.mouse_drag_callbacks.append(self._on_mouse)
        for name, key, *_ in TOOLS:
            if name not in _NAPARI_MODES:
                layer.bind_key(key, self._key_handler(name), overwrite=True)
        layer.events.mode.connect(self._on_mode)
        if self.tool in _NAPARI_MODES:
            layer.mode = _NAPARI_MODES[self.tool]
        elif self.tool:
            self._grab_mouse(layer)

    def _unbind(self) -> None:
        layer = self.layer
        if layer is None:
            return
        if self._on_mouse in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_mouse)
        for name, key, *_ in TOOLS:
            if name not in _NAPARI_MODES:
                layer.bind_key(key, None, overwrite=True)
        layer.events.mode.disconnect(self._on_mode)
        layer.mouse_pan = True
        self.layer = None
        self.pending = []

    def _key_handler(self, name: str) -> Callable[[Any], None]:
        def handler(_layer: Any) -> None:
            self.activate(name)

        handler.__doc__ = f"nucseg: {name} tool"
        return handler

    def activate(self, tool: str | None) -> None:
        """Make `tool` the active one (None: none, napari's pan / zoom)."""
        self.pending = []
        self.tool = tool
        layer = self.layer
        if layer is not None:
            if tool in _NAPARI_MODES:
                layer.mouse_pan = True
                layer.mode = _NAPARI_MODES[tool]
            elif tool is None:
                layer.mouse_pan = True
                if layer.mode in _NAPARI_MODES.values():
                    layer.mode = "pan_zoom"
            else:
                self._grab_mouse(layer)
        for callback in self.on_tool_changed:
            callback(tool)
        if tool is not None:
            help_text = next(text for name, _, _, text in TOOLS if name == tool)
            self.report(f"{tool}: {help_text}")

    def _grab_mouse(self, layer: Labels) -> None:
        """Our tools take the clicks: napari's pan/zoom mode, without dragging the camera."""
        layer.mode = "pan_zoom"
        layer.mouse_pan = False

    def _on_mode(self, event: Any) -> None:
        mode = str(getattr(event, "mode", "") or self.layer.mode) if self.layer is not None else ""
        napari_tool = {v: k for k, v in _NAPARI_MODES.items()}.get(mode)
        if napari_tool is not None and self.tool != napari_tool:
            self.tool = napari_tool
            self.pending = []
            for callback in self.on_tool_changed:
                callback(napari_tool)
        elif napari_tool is None and self.tool in _NAPARI_MODES:
            self.tool = None
            for callback in self.on_tool_changed:
                callback(None)
        elif mode != "pan_zoom" and self.tool is not None and self.tool not in _NAPARI_MODES:
            self.activate(None)  # the person picked another napari mode (fill, picker...)

    # -- mouse -------------------------------------------------------------------------------------------
    def _on_mouse(self, layer: Labels, event: Any):
        if self.tool is None or self.tool in _NAPARI_MODES or event.button not in (1, None):
            return
        start = self._data_point(layer, event.position)
        path = [start]
        yield
        while event.type == "mouse_move":
            path.append(self._data_point(layer, event.position))
            yield
        moved = float(np.hypot(*np.subtract(path[-1], start)))
        if self.tool == "cut":
            if moved >= CLICK_PX:
                self.cut(path)
            return
        if moved < CLICK_PX:
            self.click(start)

    @staticmethod
    def _data_point(layer: Labels, world: Any) -> tuple[float, float]:
        data = np.asarray(layer.world_to_data(world), float)
        return float(data[-2]), float(data[-1])

    # -- actions -----------------------------------------------------------------------------------------
    def _editing(self) -> LayerEditing:
        if self.layer is None:
            raise tools.EditRefused("choose a labels layer to correct (select a prediction in the layer list)")
        editing = editing_for(self.layer)
        assert editing is not None
        return editing

    def _run(self, make: Callable[[LayerEditing], tools.Edit]) -> bool:
        try:
            editing = self._editing()
            step = editing.apply(make(editing))
        except NucsegError as err:
            self.report(error_message(err))
            return False
        if step is not None:
            self.report(f"{step.text} (Ctrl+Z undoes it)")
        return step is not None

    def click(self, point: tuple[float, float]) -> None:
        """A click of the active tool at `point` (labels pixels)."""
        tool = self.tool
        if tool == "delete":
            self._run(lambda e: tools.delete_nucleus(e.editor.labels, point))
        elif tool == "add":
            self.add(point)
        elif tool in ("merge", "split"):
            self.pending.append(point)
            if len(self.pending) < 2:
                what = "the nucleus to merge into it" if tool == "merge" else "the other part of the nucleus"
                try:
                    label = tools.nucleus_at(self._editing().editor.labels, point)
                except NucsegError as err:
                    self.pending = []
                    self.report(error_message(err))
                    return
                if not label:
                    self.pending = []
                    self.report(f"{tool}: that click was on background; click inside a nucleus")
                    return
                self.report(f"{tool}: nucleus {label} chosen; now click {what}")
                return
            first, second = self.pending
            self.pending = []
            if tool == "merge":
                self._run(lambda e: tools.merge_nuclei(e.editor.labels, first, second))
            else:
                self._run(lambda e: tools.split_by_seeds(e.editor.labels, [first, second], e.editor.next_id()))

    def cut(self, path: list[tuple[float, float]]) -> None:
        """Cut the nucleus a drawn line crosses."""
        self._run(lambda e: tools.split_by_line(e.editor.labels, path, e.editor.next_id()))

    # -- add: maps around the click ---------------------------------------------------------------------
    def add(self, point: tuple[float, float]) -> None:
        """Add a nucleus at `point`, grown from the model's maps (computed in a worker when not cached)."""
        try:
            editing = self._editing()
            window = self._cached_window(editing, point)
        except NucsegError as err:
            self.report(error_message(err))
            return
        if window is not None:
            self._add_from(editing, point, window)
            return
        maps = editing.maps_cache
        if maps is None:
            self._add_from(editing, point, None, "no model output here and no image to run the model on")
            return
        if self.worker is not None:
            self.report("add: still computing the model's maps for the last click; click again in a moment")
            return
        self.report("add: running the model on a small window around the click...")

        def job():
            yield None
            return maps.compute(point)

        def finished() -> None:
            self.worker = None

        def failed(err: BaseException) -> None:
            self._add_from(editing, point, None, f"the model could not run ({error_message(err)})")

        self.worker = start_generator_worker(job, on_return=lambda w: self._add_from(editing, point, w),
                                             on_error=failed, on_finished=finished, desc="model maps",
                                             progress_of=lambda _: None)

    def _cached_window(self, editing: LayerEditing, point: tuple[float, float]) -> MapWindow | None:
        """The maps around `point` available now: the prediction's own, or an engine window computed before.
        Prepares `editing.maps_cache` (an EngineMaps) when the layer has no prediction of its own."""
        layer = editing.layer
        result = layer.metadata.get("nucseg_result")
        probs = getattr(result, "probabilities", None)
        if probs is not None and tuple(getattr(result.labels, "shape", ())) == layer.data.shape:
            return ResultMaps(probs, layer.data.shape, result.config.postprocess).window(point)
        if editing.maps_cache is None:
            editing.maps_cache = self._engine_maps(layer)
        return None if editing.maps_cache is None else editing.maps_cache.cached_window(point)

    def _engine_maps(self, layer: Labels) -> EngineMaps | None:
        from nucseg.config import InferenceConfig, PostprocessConfig
        from nucseg.io.base import as_rgb_uint8
        from nucseg.models.registry import DEFAULT_MODEL, resolve_model

        from .correction_regions import labels_offset
        from .layers import layer_mpp, level0_data

        image = self.image_for(layer)
        if image is None:
            return None
        oy, ox = labels_offset(image, layer)
        pixels = level0_data(image)
        config = layer.metadata.get("nucseg_config")
        if isinstance(config, dict):
            inference = InferenceConfig.from_dict(config)
        else:
            spec = resolve_model(DEFAULT_MODEL)
            inference = InferenceConfig(model=DEFAULT_MODEL, postprocess=PostprocessConfig(**spec.postprocess_defaults))

        def read(box: tuple[int, int, int, int]) -> np.ndarray:
            y, x, h, w = box
            y0, x0 = max(y + oy, 0), max(x + ox, 0)
            crop = np.asarray(pixels[y0 : y + oy + h, x0 : x + ox + w])
            return as_rgb_uint8(crop, name=f"image {image.name!r}")

        return EngineMaps(read, layer.data.shape, inference, mpp=layer_mpp(image))

    def _add_from(self, editing: LayerEditing, point: tuple[float, float], window: MapWindow | None,
                  why: str = "") -> None:
        labels = editing.editor.labels
        mask = None
        if window is not None:
            mask = grow_nucleus(window, point, labels.shape)
            why = why or "the model sees no nucleus here"
        note = ""
        if mask is None:
            mask = disc_around(point, typical_radius(labels), labels.shape)
            note = f" ({why}: a disc of the typical nucleus size; shape it with the brush)"
        try:
            step = editing.apply(tools.add_nucleus(labels, mask, point, editing.editor.next_id()))
        except NucsegError as err:
            self.report(error_message(err))
            return
        if step is not None:
            self.report(f"{step.text}{note} (Ctrl+Z undoes it)")

    # -- undo --------------------------------------------------------------------------------------------
    def undo(self) -> None:
        """Undo the last step of the bound layer."""
        self._history("undo")

    def redo(self) -> None:
        """Redo the last undone step of the bound layer."""
        self._history("redo")

    def _history(self, which: str) -> None:
        try:
            editing = self._editing()
        except NucsegError as err:
            self.report(error_message(err))
            return
        step = editing.undo() if which == "undo" else editing.redo()
        self.report(f"{which} {step.text}" if step is not None else f"nothing to {which}")
