"""The "Corrections" dock widget: save corrected nuclei as training pairs for fine-tuning.

Correct a prediction in its Labels layer (paint, erase, fill, split), choose what part of the image to keep
(the whole labelled area, the current field of view, or rectangles drawn in a Shapes layer) and press
"Add to training set": the image pixels and the labels of that region go into the `CorrectionStore` with
their provenance (source file, region, mpp, the model that made the first prediction). The list shows what is
stored; Remove moves an entry to the store's trash and Undo brings it back.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from nucseg.errors import InvalidInputError, NucsegError
from nucseg.training.corrections import CorrectionEntry, CorrectionStore, corrections_changed

from ._workers import error_message, start_generator_worker
from .layers import LayerCombo, Region, field_of_view_region, image_input, layer_mpp, shapes_to_regions

WHOLE, FIELD_OF_VIEW, SHAPES = "whole labelled area", "current field of view", "drawn rectangles"


def _level0(layer: Any) -> Any:
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def labels_offset(image: Image, labels: Labels) -> tuple[int, int]:
    """Where pixel (0, 0) of `labels` lies in level-0 pixels of `image` (the two must share a pixel grid).

    Raises:
        InvalidInputError: different pixel sizes, or a shift by a fraction of a pixel.
    """
    i_scale, l_scale = np.asarray(image.scale[-2:], float), np.asarray(labels.scale[-2:], float)
    if not np.allclose(i_scale, l_scale, rtol=1e-3):
        raise InvalidInputError(
            f"labels {labels.name!r} (pixel size {tuple(l_scale)}) and image {image.name!r} ({tuple(i_scale)}) are "
            "not on the same pixel grid: correct the labels produced for this image by the Segment widget")
    offset = (np.asarray(labels.translate[-2:], float) - np.asarray(image.translate[-2:], float)) / i_scale
    if not np.allclose(offset, np.round(offset), atol=1e-3):
        raise InvalidInputError(f"labels {labels.name!r} are shifted from image {image.name!r} by a fraction of a pixel")
    return int(round(offset[0])), int(round(offset[1]))


def crop_pair(image: Image, labels: Labels, region: Region | None) -> tuple[np.ndarray, np.ndarray, Region]:
    """Image pixels and labels of `region` (level-0 image pixels; None = all), clipped to the labelled area.

    Returns:
        (image (h, w, 3|4) or (h, w), labels (h, w), the region actually cropped).

    Raises:
        InvalidInputError: the layers do not share a pixel grid or the region does not overlap the labels.
    """
    img0, lab0 = _level0(image), _level0(labels)
    if lab0.ndim != 2:
        raise InvalidInputError(f"labels {labels.name!r} have shape {tuple(lab0.shape)}; one 2-D label image is needed")
    H, W = int(img0.shape[0]), int(img0.shape[1])
    oy, ox = labels_offset(image, labels)
    y, x, h, w = region if region is not None else (0, 0, H, W)
    y0, x0 = max(y, oy, 0), max(x, ox, 0)
    y1, x1 = min(y + h, oy + int(lab0.shape[0]), H), min(x + w, ox + int(lab0.shape[1]), W)
    if y1 <= y0 or x1 <= x0:
        raise InvalidInputError(f"the chosen region does not overlap the labels {labels.name!r}: move the view or "
                                "draw the rectangle over the corrected nuclei")
    pixels = np.asarray(img0[y0:y1, x0:x1])
    return pixels, np.asarray(lab0[y0 - oy : y1 - oy, x0 - ox : x1 - ox]), (y0, x0, y1 - y0, x1 - x0)


def provenance_of(image: Image, labels: Labels, region: Region, how: str) -> dict[str, Any]:
    """Where a correction came from: source file, level, region, mpp and the model of the first prediction."""
    config = labels.metadata.get("nucseg_config") or {}
    model_info = labels.metadata.get("nucseg_model")
    return {
        "source": image.metadata.get("nucseg_path") or image.name,
        "image_layer": image.name,
        "labels_layer": labels.name,
        "level": 0,
        "region": list(region),
        "region_from": how,
        "mpp": layer_mpp(image),
        "model": config.get("model") if isinstance(config, dict) else None,
        "model_info": model_info if isinstance(model_info, (dict, str)) else None,
    }


def _add_job(store: CorrectionStore, items: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]
             ) -> Generator[None, None, list[CorrectionEntry]]:
    entries = []
    for image, labels, prov in items:
        entries.append(store.add(image, labels, prov))
        yield None
    return entries


class CorrectionsWidget(QWidget):
    """Add corrected regions to the training set; list, remove and restore them.

    Args:
        napari_viewer: the viewer.
        store: the corrections store (default: ``$NUCSEG_HOME/corrections``).
    """

    #: relays `corrections_changed` (which may be emitted in a worker thread) to the GUI thread
    _store_changed_qt = Signal(object)

    def __init__(self, napari_viewer: napari.viewer.Viewer, store: CorrectionStore | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.store = store or CorrectionStore()
        self._worker: Any = None
        self.image_combo = LayerCombo(napari_viewer, (Image,))
        self.labels_combo = LayerCombo(napari_viewer, (Labels,),
                                       predicate=lambda layer: not layer.metadata.get("nucseg_overlay"))
        self.region_combo = QComboBox()
        self.region_combo.addItems([WHOLE, FIELD_OF_VIEW, SHAPES])
        self.shapes_combo = LayerCombo(napari_viewer, (Shapes,))
        self.add_button = QPushButton("Add to training set")
        self.add_button.setToolTip("save the image and the corrected labels of the chosen region as a training pair")
        self.list = QListWidget()
        self.list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("move the selected corrections to the store's trash (Undo brings them back)")
        self.undo_button = QPushButton("Undo")
        self.count_label = QLabel()
        self.count_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("corrected labels", self.labels_combo)
        form.addRow("region", self.region_combo)
        form.addRow("shapes layer", self.shapes_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.remove_button)
        buttons.addWidget(self.undo_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.add_button)
        layout.addWidget(self.count_label)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)

        self.add_button.clicked.connect(self.add_correction)
        self.remove_button.clicked.connect(self.remove_selected)
        self.undo_button.clicked.connect(self.undo)
        self.region_combo.currentTextChanged.connect(self._update_enabled)
        self.labels_combo.currentTextChanged.connect(self._match_image)
        self._store_changed_qt.connect(self._store_changed)
        corrections_changed.connect(self._relay_store_changed)
        self._match_image()
        self._update_enabled()
        self.refresh()

    # -- inputs ------------------------------------------------------------------------------------------
    def _update_enabled(self, *_: Any) -> None:
        self.shapes_combo.setEnabled(self.region_combo.currentText() == SHAPES)

    def _match_image(self, *_: Any) -> None:
        """Pick the image a result layer was made from (segment results are named '<image> nuclei')."""
        labels = self.labels_combo.current_layer()
        if labels is None:
            return
        for layer in self.image_combo.layers():
            if labels.name.startswith(f"{layer.name} nuclei"):
                self.image_combo.set_layer(layer)
                return

    def regions(self, image: Image) -> list[Region | None]:
        """The regions chosen, in level-0 image pixels (None = the whole labelled area)."""
        choice = self.region_combo.currentText()
        if choice == FIELD_OF_VIEW:
            return [field_of_view_region(self.viewer, image)]
        if choice == SHAPES:
            shapes = self.shapes_combo.current_layer()
            if shapes is None:
                raise InvalidInputError("no Shapes layer: add one and draw a rectangle around the corrected nuclei")
            return list(shapes_to_regions(shapes, image))
        return [None]

    def collect(self) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
        """(image, labels, provenance) of each chosen region, read from the layers on the GUI thread."""
        image, labels = self.image_combo.current_layer(), self.labels_combo.current_layer()
        if image is None:
            raise InvalidInputError("no image layer: open the H&E image the labels belong to")
        if labels is None:
            raise InvalidInputError("no Labels layer: segment the image first (Segment widget) and correct the result")
        image_input(image)  # refuses stacks and non-2-D images with a readable message
        items = []
        for region in self.regions(image):
            pixels, lab, cropped = crop_pair(image, labels, region)
            items.append((pixels, lab.copy(), provenance_of(image, labels, cropped, self.region_combo.currentText())))
        return items

    # -- actions -----------------------------------------------------------------------------------------
    def add_correction(self) -> None:
        """Save the chosen region(s) as training pairs (in a worker: PNG / TIFF encoding can take a moment)."""
        if self._worker is not None:
            return
        try:
            items = self.collect()
            from nucseg.training.corrections import check_pair

            for pixels, lab, _ in items:
                check_pair(pixels, lab)  # refuse at once, with the reason, before anything is written
        except NucsegError as err:
            show_error(error_message(err))
            return
        self.add_button.setEnabled(False)
        self._worker = start_generator_worker(
            lambda: _add_job(self.store, items), on_return=self._added, on_finished=self._add_finished,
            desc="saving corrections", progress_of=lambda _: None)

    def _added(self, entries: list[CorrectionEntry]) -> None:
        nuclei = sum(e.n_nuclei for e in entries)
        show_info(f"added {len(entries)} correction{'s' * (len(entries) != 1)} ({nuclei} nuclei) to the training set")

    def _add_finished(self) -> None:
        self._worker = None
        self.add_button.setEnabled(True)
        self.refresh()

    def selected_ids(self) -> list[str]:
        return [item.data(256) for item in self.list.selectedItems()]  # 256 = Qt.UserRole

    def remove_selected(self) -> None:
        """Move the selected entries to the trash."""
        ids = self.selected_ids()
        if not ids:
            show_info("select corrections in the list to remove them")
            return
        try:
            for entry_id in ids:
                self.store.remove(entry_id)
        except NucsegError as err:
            show_error(error_message(err))
        self.refresh()

    def undo(self) -> None:
        """Restore the last removed entry."""
        try:
            entry = self.store.undo()
        except NucsegError as err:
            show_error(error_message(err))
            return
        if entry is None:
            show_info("nothing to undo")
        self.refresh()

    def _relay_store_changed(self, root: Any) -> None:
        try:
            self._store_changed_qt.emit(root)  # queued to the GUI thread when emitted from a worker
        except RuntimeError:  # the widget was closed: stop listening
            corrections_changed.disconnect(self._relay_store_changed)

    def _store_changed(self, root: Any) -> None:
        if str(root) == str(self.store.root):
            self.refresh()

    def refresh(self) -> None:
        """Re-list the stored entries and the count."""
        try:
            entries = self.store.entries()
        except NucsegError as err:
            show_error(error_message(err))
            entries = []
        self.list.clear()
        for entry in entries:
            src = str(entry.source).replace("\\", "/").rsplit("/", 1)[-1]
            region = entry.provenance.get("region")
            text = f"{entry.id}  {src}  {entry.shape[0]}x{entry.shape[1]} px  {entry.n_nuclei} nuclei"
            item = QListWidgetItem(text)
            item.setData(256, entry.id)
            item.setToolTip(f"region (y, x, h, w) {region}, model {entry.provenance.get('model')}, "
                            f"saved {entry.created}")
            self.list.addItem(item)
        nuclei = sum(e.n_nuclei for e in entries)
        self.count_label.setText(f"{len(entries)} corrections, {nuclei} nuclei in {self.store.root}")
