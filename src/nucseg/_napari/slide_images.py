"""A small dock widget that shows a slide's label, macro and thumbnail images on request.

Associated images are not part of the slide's coordinate space (they have no microns per pixel of their own),
so they are shown here, in the dock, rather than as layers that would break the viewer's µm scale bar.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QVBoxLayout, QWidget

#: the shown image is scaled to at most this width in the dock (px)
SHOW_WIDTH = 320


class SlideImagesWidget(QWidget):
    """Pick a slide layer and one of its associated images (label, macro, thumbnail) to look at."""

    def __init__(self, napari_viewer: Any):
        super().__init__()
        self.viewer = napari_viewer
        self.slide_box = QComboBox()
        self.image_box = QComboBox()
        self.picture = QLabel("open a slide (SVS, NDPI, MRXS, DICOM...) with napari-nucseg")
        self.picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.picture.setWordWrap(True)
        self.caption = QLabel("")
        form = QFormLayout()
        form.addRow("slide", self.slide_box)
        form.addRow("image", self.image_box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.picture)
        layout.addWidget(self.caption)
        layout.addStretch(1)
        self.slide_box.currentIndexChanged.connect(self._fill_images)
        self.image_box.currentIndexChanged.connect(self._show)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._fill_slides)
        self._fill_slides()

    def _slides(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if layer.metadata.get("associated")]

    def _fill_slides(self, *_: Any) -> None:
        current = self.slide_box.currentText()
        self.slide_box.blockSignals(True)
        self.slide_box.clear()
        self.slide_box.addItems([layer.name for layer in self._slides()])
        if current in [layer.name for layer in self._slides()]:
            self.slide_box.setCurrentText(current)
        self.slide_box.blockSignals(False)
        self._fill_images()

    def _fill_images(self, *_: Any) -> None:
        layer = next((la for la in self._slides() if la.name == self.slide_box.currentText()), None)
        self.image_box.blockSignals(True)
        self.image_box.clear()
        if layer is not None:
            self.image_box.addItems(list(layer.metadata["associated"]))
        self.image_box.blockSignals(False)
        self._show()

    def read(self) -> np.ndarray | None:
        """The chosen associated image as (H, W, 3) uint8, or None when nothing is chosen."""
        from nucseg.io.slides import open_slide

        layer = next((la for la in self._slides() if la.name == self.slide_box.currentText()), None)
        name = self.image_box.currentText()
        if layer is None or not name:
            return None
        with open_slide(layer.metadata["nucseg_path"]) as slide:
            return slide.read_associated(name)

    def _show(self, *_: Any) -> None:
        from napari.utils.notifications import show_error

        from nucseg.errors import NucsegError

        try:
            rgb = self.read()
        except NucsegError as err:
            show_error(str(err))
            rgb = None
        if rgb is None:
            self.picture.setPixmap(QPixmap())
            self.picture.setMinimumSize(0, 0)
            self.caption.setText("")
            return
        rgb = np.ascontiguousarray(rgb)
        h, w = rgb.shape[:2]
        image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        pixmap = QPixmap.fromImage(image)
        if w > SHOW_WIDTH:
            pixmap = pixmap.scaledToWidth(SHOW_WIDTH, Qt.TransformationMode.SmoothTransformation)
        self.picture.setPixmap(pixmap)
        self.picture.setMinimumSize(pixmap.size())  # a word-wrapping QLabel would otherwise lay out as text
        self.caption.setText(f"{self.image_box.currentText()}: {w} x {h} px (width x height)")
