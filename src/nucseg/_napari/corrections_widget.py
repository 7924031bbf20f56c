"""The "Corrections" dock widget: correct nuclei, and save what was corrected or reviewed as training pairs.

*Correct nuclei* (`correction_tools_box`): add a missed nucleus from the model's maps, delete, merge, split or cut
one, brush and eraser, on the selected labels layer; each is one undoable step (Ctrl+Z / Ctrl+Shift+Z).

Then say what you checked: press *Mark current view as reviewed* (screen by screen), or draw rectangles or
polygons in the "reviewed regions" layer (`reviewed_regions`). *Add to training set* stores each reviewed region
and the neighbourhood of every edit (or the whole labelled area, the field of view, or rectangles of another
Shapes layer) with its image pixels, labels, reviewed mask and provenance in the `CorrectionStore`; fine-tuning
learns only inside the reviewed mask: the reviewed regions and the edited nuclei with the background near them
(`nucseg.training.corrections.reviewed_regions.edit_neighbourhood`), never a nucleus nobody touched outside a reviewed region.
*the whole region was reviewed* says you checked all of what is stored.

The corrected-labels choice defaults to the newest layer a person edited, never to a layer nobody edited (a fresh
prediction) nor one marked or named as ground truth (`layer_roles`); with none edited it is left empty.
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
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from nucseg.errors import InvalidInputError, NucsegError
from nucseg.training.corrections.entry import CorrectionEntry
from nucseg.training.corrections.reviewed_regions import edit_neighbourhood, merge_boxes, region_boxes
from nucseg.training.corrections.store import CorrectionStore, corrections_changed

from ._forms import scroll_area
from ._workers import error_message, start_generator_worker
from .correction_regions import crop_pair, labels_offset, provenance_of
from .correction_tools_box import CorrectionToolsBox
from .corrections_list import CorrectionsList
from .label_editing import EDITED_KEY, labels_edited, user_edited
from .layer_picker import layer_picker
from .layer_roles import OVERLAY, REVIEWED, TRUTH, layer_role, preferred_correction_layer
from .layers import Region, field_of_view_region, image_input, level0_data, shapes_to_regions
from .reviewed_regions import find_reviewed_layer, mark_view_reviewed, reviewed_boxes_or_none, reviewed_mask

REVIEWED_AREAS, WHOLE, FIELD_OF_VIEW, SHAPES = ("reviewed regions and my edits", "whole labelled area",
                                                "current field of view", "drawn rectangles")
Item = tuple[np.ndarray, np.ndarray, dict[str, Any], "np.ndarray | bool"]


def _add_job(store: CorrectionStore, items: list[Item]) -> Generator[None, None, list[CorrectionEntry]]:
    entries = []
    for image, labels, prov, reviewed in items:
        entries.append(store.add(image, labels, prov, reviewed=reviewed))
        yield None
    return entries


class CorrectionsWidget(QWidget):
    """Add corrected, reviewed regions to the training set; list, remove and restore them.

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
        self._labels_chosen = False  # the person picked the labels layer: keep it
        self.image_combo = layer_picker(napari_viewer, Image, predicate=lambda layer: layer_role(layer) != OVERLAY)
        self.labels_combo = layer_picker(napari_viewer, Labels, optional=True,
                                         predicate=lambda layer: layer_role(layer) not in (OVERLAY, REVIEWED))
        self.labels_combo.setToolTip("the labels you corrected; a layer nobody edited is never chosen for you")
        self.tools_box = CorrectionToolsBox(napari_viewer, self.image_of)
        self.truth_warning = QLabel()
        self.truth_warning.setWordWrap(True)
        self.truth_warning.setStyleSheet("color: #ffb74d")
        self.region_combo = QComboBox()
        self.region_combo.addItems([REVIEWED_AREAS, WHOLE, FIELD_OF_VIEW, SHAPES])
        self.shapes_combo = layer_picker(napari_viewer, Shapes, predicate=lambda layer: layer_role(layer) != REVIEWED)
        self.mark_view_button = QPushButton("Mark current view as reviewed")
        self.mark_view_button.setToolTip("adds the visible field to the 'reviewed regions' layer; you can also draw "
                                         "rectangles or polygons there around the nuclei you checked")
        self.whole_check = QCheckBox("the whole region was reviewed")
        self.whole_check.setToolTip("all nuclei in what is stored were checked, reviewed regions or not")
        self.add_button = QPushButton("Add to training set")
        self.add_button.setToolTip("save the image, the corrected labels and the reviewed mask of the chosen "
                                   "region as a training pair")
        self.entries = CorrectionsList(self.store, self)
        self._build_layout()
        self.add_button.clicked.connect(self.add_correction)
        self.mark_view_button.clicked.connect(self.mark_view)
        self.region_combo.currentTextChanged.connect(self._update_enabled)
        self.labels_combo.changed.connect(self._labels_changed)
        self.labels_combo.native.activated.connect(self._person_chose_labels)  # Qt's: only a person's choice
        napari_viewer.layers.events.inserted.connect(self._guess_labels)
        napari_viewer.layers.events.removed.connect(self._guess_labels)
        self._store_changed_qt.connect(self._store_changed)
        corrections_changed.connect(self._relay_store_changed)
        labels_edited.connect(self._labels_edited)
        self._guess_labels()
        self._update_enabled()
        self.entries.refresh()

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("image", self.image_combo.native)
        form.addRow("corrected labels", self.labels_combo.native)
        form.addRow(self.truth_warning)
        form.addRow("region", self.region_combo)
        form.addRow("shapes layer", self.shapes_combo.native)
        inner = QWidget()
        layout = QVBoxLayout(inner)
        layout.addWidget(self.tools_box)
        layout.addLayout(form)
        layout.addWidget(self.mark_view_button)
        layout.addWidget(self.whole_check)
        layout.addWidget(self.add_button)
        layout.addWidget(self.entries, 1)
        for combo in inner.findChildren(QComboBox):  # long layer names do not widen the dock past the window
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(14)
        scroll = scroll_area(inner)  # fits a small screen: scrolls rather than squashing the list
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

    # -- inputs ------------------------------------------------------------------------------------------
    def _update_enabled(self, *_: Any) -> None:
        self.shapes_combo.enabled = self.region_combo.currentText() == SHAPES

    def _person_chose_labels(self, *_: Any) -> None:
        self._labels_chosen = True

    def _guess_labels(self, *_: Any) -> None:
        """The newest layer a person edited, unless the person chose a layer that still exists; none when no
        layer was edited (never a fresh prediction nobody checked, never a truth layer)."""
        if self._labels_chosen and self.labels_combo.current_layer() is not None:
            return
        self._labels_chosen = False
        preferred = preferred_correction_layer([layer for layer in self.labels_combo.layers() if user_edited(layer)])
        self.labels_combo.set_layer(preferred)
        self._labels_changed()

    def _labels_edited(self, layer: Any) -> None:
        try:
            self._guess_labels()
        except RuntimeError:  # the widget was closed: stop listening
            labels_edited.disconnect(self._labels_edited)

    def _labels_changed(self, *_: Any) -> None:
        labels = self.labels_combo.current_layer()
        is_truth = labels is not None and layer_role(labels) == TRUTH
        self.truth_warning.setText(f"{labels.name!r} is marked as ground truth: corrections are normally made on a "
                                   "prediction" if is_truth else "")
        self.truth_warning.setVisible(is_truth)
        self._match_image()

    def _match_image(self) -> None:
        """Pick the image a result layer was made from (segment results are named '<image> nuclei')."""
        labels = self.labels_combo.current_layer()
        if labels is None:
            return
        for layer in self.image_combo.layers():
            if labels.name.startswith(f"{layer.name} nuclei"):
                self.image_combo.set_layer(layer)
                return

    def image_of(self, labels: Labels) -> Image | None:
        """The image layer a labels layer was made from (recorded by the Segment widget, or named "<image>
        nuclei ..."), else the chosen image; None when there is no image."""
        recorded = (labels.metadata.get("nucseg_image") or {}).get("name")
        images = self.image_combo.layers()
        for layer in images:
            if layer.name == recorded or labels.name.startswith(f"{layer.name} nuclei"):
                return layer
        return self.image_combo.current_layer()

    def _image(self) -> Image:
        image = self.image_combo.current_layer()
        if image is None:
            raise InvalidInputError("no image layer: open the H&E image the labels belong to")
        return image

    def mark_view(self) -> Region | None:
        """Add the current field of view to the reviewed regions."""
        try:
            region = mark_view_reviewed(self.viewer, self._image())
        except NucsegError as err:
            show_error(error_message(err))
            return None
        self.viewer.layers.selection.active = self.labels_combo.current_layer() or self._image()
        return region

    def regions(self, image: Image) -> list[Region | None]:
        """The regions chosen, in level-0 image pixels (None = the whole labelled area)."""
        choice = self.region_combo.currentText()
        if choice == REVIEWED_AREAS:
            layer = find_reviewed_layer(self.viewer)
            boxes = [] if layer is None else reviewed_boxes_or_none(layer, image)
            boxes += self._edit_boxes(image)
            if not boxes:
                raise InvalidInputError("nothing is marked as reviewed and nothing was corrected yet: correct nuclei "
                                        "in the labels, press 'Mark current view as reviewed', or draw the checked "
                                        "areas in a 'reviewed regions' layer")
            merged = merge_boxes([(y, y + h, x, x + w) for y, x, h, w in boxes])
            return [(y0, x0, y1 - y0, x1 - x0) for y0, y1, x0, x1 in merged]
        if choice == FIELD_OF_VIEW:
            return [field_of_view_region(self.viewer, image)]
        if choice == SHAPES:
            shapes = self.shapes_combo.current_layer()
            if shapes is None:
                raise InvalidInputError("no Shapes layer: add one and draw a rectangle around the corrected nuclei")
            return list(shapes_to_regions(shapes, image))
        return [None]

    def _neighbourhood(self) -> np.ndarray | None:
        """The edit neighbourhood of the chosen labels (labels pixels), None when nothing was edited."""
        labels = self.labels_combo.current_layer()
        edited = None if labels is None else labels.metadata.get(EDITED_KEY)
        if not isinstance(edited, np.ndarray) or edited.shape != level0_data(labels).shape or not edited.any():
            return None
        return edit_neighbourhood(edited, np.asarray(level0_data(labels)))

    def _edit_boxes(self, image: Image) -> list[Region]:
        near, labels = self._neighbourhood(), self.labels_combo.current_layer()
        if near is None or labels is None:
            return []
        oy, ox = labels_offset(image, labels)
        return [(y + oy, x + ox, h, w) for y, x, h, w in region_boxes(near)]

    def collect(self) -> list[Item]:
        """(image, labels, provenance, reviewed) of each chosen region, read from the layers on the GUI thread.

        Raises:
            InvalidInputError: a layer is missing, or a region holds nothing marked as reviewed.
        """
        image, labels = self._image(), self.labels_combo.current_layer()
        if labels is None:
            raise InvalidInputError("no corrected labels chosen: correct nuclei in a labels layer (Correct nuclei "
                                    "above), or choose the layer you checked")
        image_input(image)  # refuses stacks and non-2-D images with a readable message
        reviewed_layer = find_reviewed_layer(self.viewer)
        near = self._neighbourhood()
        items: list[Item] = []
        for region in self.regions(image):
            pixels, lab, cropped = crop_pair(image, labels, region)
            reviewed: np.ndarray | bool = True
            if not self.whole_check.isChecked():
                reviewed = reviewed_mask(reviewed_layer, image, cropped)
                if near is not None:
                    oy, ox = labels_offset(image, labels)
                    y, x, h, w = cropped
                    reviewed |= near[y - oy : y - oy + h, x - ox : x - ox + w]
                if not reviewed.any():
                    raise InvalidInputError(
                        f"nothing in the region {cropped[2]}x{cropped[3]} px at ({cropped[0]}, {cropped[1]}) is "
                        "marked as reviewed or was corrected: press 'Mark current view as reviewed', draw the "
                        "checked area in the 'reviewed regions' layer, or tick 'the whole region was reviewed'")
            prov = provenance_of(image, labels, cropped, self.region_combo.currentText())
            items.append((pixels, lab.copy(), prov, reviewed))
        return items

    # -- actions -----------------------------------------------------------------------------------------
    def add_correction(self) -> None:
        """Save the chosen region(s) as training pairs (in a worker: PNG / TIFF encoding can take a moment)."""
        if self._worker is not None:
            return
        try:
            items = self.collect()
            from nucseg.training.corrections.entry import check_pair, check_reviewed

            for pixels, lab, _, reviewed in items:
                check_pair(pixels, lab)  # refuse at once, with the reason, before anything is written
                check_reviewed(reviewed, lab.shape)
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
        self.entries.refresh()

    def _relay_store_changed(self, root: Any) -> None:
        try:
            self._store_changed_qt.emit(root)  # queued to the GUI thread when emitted from a worker
        except RuntimeError:  # the widget was closed: stop listening
            corrections_changed.disconnect(self._relay_store_changed)

    def _store_changed(self, root: Any) -> None:
        if str(root) == str(self.store.root):
            self.entries.refresh()
