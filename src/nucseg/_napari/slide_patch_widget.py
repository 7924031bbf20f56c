"""The "Correct a slide result" dock widget: edit a whole-slide result through plain numpy patches.

A slide result is a multiscale Labels layer backed by zarr, which napari cannot paint. *Open current view* (or
*Open drawn region*: the rectangles of a Shapes layer) reads that part of the result into an ordinary Labels layer
placed exactly over it (same scale, translated to its offset); every napari label tool works there. *Accept* writes
the edits back into the result's zarr, block by block and write-ahead (`nucseg.jobs.slide_patches`), and the slide
layer shows them at every zoom; *Undo last accepted* puts back what the last accepted patch replaced; *Discard*
drops the patch layer and its unaccepted edits; *Add to training set* stores the patch (the slide's pixels under
it, its labels) in the corrections store as reviewed as a whole.

Thin: the zarr work runs in a worker, through the core functions; this widget reads layers and moves them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from nucseg.errors import InvalidInputError, NucsegError
from nucseg.jobs import slide_patches
from nucseg.training.corrections.store import CorrectionStore

from ._workers import JobControls, error_message, start_generator_worker
from .layer_picker import layer_picker
from .layer_roles import PREDICTION, layer_role, set_role
from .layers import field_of_view_region, shapes_to_regions

#: metadata key of a patch layer: the `Patch` it was opened as, and the slide result layer it belongs to
PATCH_KEY = "nucseg_patch"
HELP = ("Open the current view (or drawn rectangles) of a slide result as a patch, correct it with the label "
        "tools, then Accept to write it into the slide result. Undo last accepted puts back what it replaced.")


def is_slide_result(layer: Any) -> bool:
    """A multiscale Labels layer of a result streamed into zarr (what napari cannot paint)."""
    result = layer.metadata.get("nucseg_result") if isinstance(layer, Labels) else None
    return bool(result is not None and getattr(layer, "multiscale", False)
                and getattr(result.labels, "store", None) is not None)


class SlidePatchWidget(QWidget):
    """Open regions of a slide result as editable patches; accept, undo, discard, add to the training set.

    Args:
        napari_viewer: the viewer.
        store: the corrections store (default ``$NUCSEG_HOME/corrections``).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, store: CorrectionStore | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.store = store or CorrectionStore()
        self._worker: Any = None
        self.result_combo = layer_picker(napari_viewer, Labels, predicate=is_slide_result)
        self.shapes_combo = layer_picker(napari_viewer, Shapes, optional=True,
                                         predicate=lambda layer: layer_role(layer) is None)
        self.patch_combo = layer_picker(napari_viewer, Labels, predicate=lambda layer: PATCH_KEY in layer.metadata)
        self.open_view_button = QPushButton("Open current view as a patch")
        self.open_shapes_button = QPushButton("Open drawn rectangles as patches")
        self.accept_button = QPushButton("Accept: write into the slide result")
        self.discard_button = QPushButton("Discard patch")
        self.undo_button = QPushButton("Undo last accepted patch")
        self.train_button = QPushButton("Add patch to training set")
        self.train_button.setToolTip("stores the slide's pixels under the patch and its labels as a correction "
                                     "reviewed as a whole")
        self.controls = JobControls(self)
        self.help = QLabel(HELP)
        self.help.setWordWrap(True)
        self._build_layout()
        self.open_view_button.clicked.connect(self.open_view)
        self.open_shapes_button.clicked.connect(self.open_shapes)
        self.accept_button.clicked.connect(self.accept)
        self.discard_button.clicked.connect(self.discard)
        self.undo_button.clicked.connect(self.undo)
        self.train_button.clicked.connect(self.add_to_training)

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("slide result", self.result_combo.native)
        form.addRow("rectangles", self.shapes_combo.native)
        form.addRow("patch", self.patch_combo.native)
        row = QHBoxLayout()
        row.addWidget(self.accept_button)
        row.addWidget(self.discard_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.help)
        layout.addLayout(form)
        layout.addWidget(self.open_view_button)
        layout.addWidget(self.open_shapes_button)
        layout.addLayout(row)
        layout.addWidget(self.undo_button)
        layout.addWidget(self.train_button)
        layout.addWidget(self.controls)
        layout.addStretch(1)

    # -- opening -----------------------------------------------------------------------------------------
    def _result_layer(self) -> Labels:
        layer = self.result_combo.current_layer()
        if layer is None:
            raise InvalidInputError("no slide result: segment a slide first (Segment widget); results of images "
                                    "small enough for memory are edited directly in their own layer")
        return layer

    def open_view(self) -> list[Labels]:
        """Open the field of view of the chosen slide result as a patch layer."""
        try:
            layer = self._result_layer()
            return [self._open(layer, field_of_view_region(self.viewer, layer))]
        except NucsegError as err:
            show_error(error_message(err))
            return []

    def open_shapes(self) -> list[Labels]:
        """Open each rectangle of the chosen Shapes layer as a patch layer."""
        try:
            layer = self._result_layer()
            shapes = self.shapes_combo.current_layer()
            if shapes is None:
                raise InvalidInputError("no Shapes layer chosen: add one and draw rectangles over the slide result")
            return [self._open(layer, box) for box in shapes_to_regions(shapes, layer)]
        except NucsegError as err:
            show_error(error_message(err))
            return []

    def _open(self, layer: Labels, box: tuple[int, int, int, int]) -> Labels:
        result = layer.metadata["nucseg_result"]
        patch = slide_patches.open_patch(result.labels, box)
        scale = np.asarray(layer.scale[-2:], float)
        translate = np.asarray(layer.translate[-2:], float) + np.asarray(patch.box[:2]) * scale
        region0 = (result.region[0] + patch.box[0], result.region[1] + patch.box[1], patch.box[2], patch.box[3])
        metadata = {PATCH_KEY: {"patch": patch, "result_layer": layer.name},
                    "nucseg_config": layer.metadata.get("nucseg_config"), "mpp": layer.metadata.get("mpp"),
                    "nucseg_model": layer.metadata.get("nucseg_model"), "nucseg_region": region0,
                    "nucseg_image": layer.metadata.get("nucseg_image")}
        patch_layer = Labels(patch.labels.copy(), name=f"{layer.name} patch {patch.box[0]},{patch.box[1]}",
                             scale=tuple(scale), translate=tuple(translate), units=tuple(layer.units)[-2:],
                             metadata=metadata, opacity=0.8)
        set_role(patch_layer, PREDICTION)
        self.viewer.add_layer(patch_layer)
        self.viewer.layers.selection.active = patch_layer
        self.patch_combo.set_layer(patch_layer)
        self.controls.status.setText(f"patch {patch.box[2]} x {patch.box[3]} px opened (grown from "
                                     f"{patch.asked[2]} x {patch.asked[3]} to hold its nuclei whole)")
        return patch_layer

    # -- accepting, undoing ------------------------------------------------------------------------------
    def _patch_layer(self) -> Labels:
        layer = self.patch_combo.current_layer()
        if layer is None:
            raise InvalidInputError("no patch open: open the current view or drawn rectangles first")
        return layer

    def _slide_layer_of(self, patch_layer: Labels) -> Labels:
        name = patch_layer.metadata[PATCH_KEY]["result_layer"]
        if name not in self.viewer.layers:
            raise InvalidInputError(f"the slide result {name!r} of this patch is no longer in the viewer")
        return self.viewer.layers[name]

    def _run(self, job: Any, done: Any, text: str) -> None:
        if self._worker is not None:
            return
        self.setEnabled(False)

        def finished() -> None:
            self._worker = None
            self.setEnabled(True)

        self._worker = start_generator_worker(job, on_return=done, on_finished=finished, controls=self.controls,
                                              desc=text, progress_of=lambda _: None)
        self.controls.status.setText(f"{text}…")

    def accept(self) -> None:
        """Write the chosen patch's edits into its slide result (in a worker)."""
        try:
            patch_layer = self._patch_layer()
            slide = self._slide_layer_of(patch_layer)
        except NucsegError as err:
            show_error(error_message(err))
            return
        array = slide.metadata["nucseg_result"].labels
        patch = patch_layer.metadata[PATCH_KEY]["patch"]
        edited = np.array(patch_layer.data, copy=True)

        def job():
            yield from ()
            entry = slide_patches.accept_patch(array, patch, edited)
            y, x, h, w = patch.box
            return entry, slide_patches.open_patch(array, patch.box, grow=0)

        def done(value: Any) -> None:
            entry, reread = value
            slide.refresh()
            patch_layer.metadata[PATCH_KEY]["patch"] = reread  # later edits are compared with what is written
            patch_layer.data = reread.labels.copy()
            if entry is None:
                self.controls.status.setText("nothing was edited in this patch: nothing written")
                return
            self.controls.status.setText(f"accepted: {entry.changed_pixels} pixels in {entry.blocks} blocks written "
                                         f"into {slide.name} ({entry.new_ids} new nuclei); Undo puts them back")
            show_info(f"patch written into {slide.name}")

        self._run(job, done, "writing the patch into the slide result")

    def undo(self) -> None:
        """Put back what the last accepted patch of the chosen slide result replaced (in a worker)."""
        try:
            slide = self._result_layer()
        except NucsegError as err:
            show_error(error_message(err))
            return
        array = slide.metadata["nucseg_result"].labels

        def job():
            yield from ()
            return slide_patches.undo_patch(array)

        def done(entry: Any) -> None:
            slide.refresh()
            if entry is None:
                self.controls.status.setText(f"no accepted patch of {slide.name} to undo")
                return
            self._reread_unedited(slide, array)
            self.controls.status.setText(f"undone: the {entry.blocks} blocks of patch {entry.name} hold what they "
                                         "held before it")

        self._run(job, done, "undoing the last accepted patch")

    def _reread_unedited(self, slide: Labels, array: Any) -> None:
        """Open patches of `slide` without edits of their own show the result as it is now."""
        for layer in [layer for layer in self.viewer.layers if PATCH_KEY in layer.metadata]:
            info = layer.metadata[PATCH_KEY]
            if info["result_layer"] == slide.name and np.array_equal(np.asarray(layer.data), info["patch"].labels):
                info["patch"] = slide_patches.open_patch(array, info["patch"].box, grow=0)
                layer.data = info["patch"].labels.copy()

    def discard(self) -> None:
        """Remove the chosen patch layer (its unaccepted edits are dropped; the slide result is untouched)."""
        try:
            layer = self._patch_layer()
        except NucsegError as err:
            show_error(error_message(err))
            return
        self.viewer.layers.remove(layer)
        self.controls.status.setText(f"discarded {layer.name}")

    # -- training ----------------------------------------------------------------------------------------
    def _image_of(self, slide: Labels) -> Image:
        info = slide.metadata.get("nucseg_image") or {}
        name = info.get("name")
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Image):
            return self.viewer.layers[name]
        raise InvalidInputError(f"the slide image of {slide.name!r} is not in the viewer: open it again")

    def add_to_training(self) -> None:
        """Store the chosen patch (slide pixels and labels) as a correction reviewed as a whole (in a worker)."""
        from .correction_regions import crop_pair, provenance_of

        try:
            layer = self._patch_layer()
            image = self._image_of(self._slide_layer_of(layer))
            pixels, labels, region = crop_pair(image, layer, None)
            provenance = provenance_of(image, layer, region, "slide patch")
        except NucsegError as err:
            show_error(error_message(err))
            return
        store, labels = self.store, labels.copy()

        def job():
            yield from ()
            return store.add(np.asarray(pixels), labels, provenance, reviewed=True)

        def done(entry: Any) -> None:
            self.controls.status.setText(f"added to the training set as {entry.id} ({entry.n_nuclei} nuclei)")
            show_info(f"patch added to the training set ({Path(str(store.root)).name})")

        self._run(job, done, "adding the patch to the training set")
