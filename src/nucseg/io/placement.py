"""Where a label map lies on the image it was segmented from: written into every labels export, read back.

A `Placement` is the label map's origin ``offset = (y0, x0)`` in full-resolution pixels of its source image (the
top-left corner of the segmented region; (0, 0) for a whole image) and that image (``{"name", "path"}``), so
that a reopened export overlays the nuclei it came from.

- **OME-TIFF**: the standard place is the Plane's ``PositionY`` / ``PositionX``: the region's corner in µm when the
  pixel size is known (``offset * mpp``), else in OME's ``pixel`` length unit. A ``MapAnnotation`` in the
  ``napari-nucseg`` namespace repeats the offset in pixels (exact integers, no µm round trip) with the source
  image's name and path.
- **OME-NGFF**: each dataset's ``coordinateTransformations`` is ``scale`` then ``translation`` (``offset * mpp``,
  or ``offset`` in pixels when the size is unknown): NGFF maps array index i to ``i * scale + translation``, which
  is napari's ``translate + i * scale``. The ``nucseg`` attributes repeat ``offset_px`` and the image.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

NAMESPACE = "napari-nucseg"
#: OME UnitsLength -> microns (the ones a Plane position is written in)
_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


@dataclasses.dataclass(frozen=True)
class Placement:
    """A label map's origin (y0, x0) in full-resolution pixels of its source image, and that image."""

    offset: tuple[float, float] = (0.0, 0.0)
    image: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, offset: Sequence[float] | None = None, image: Any = None) -> Placement:
        """From an (y0, x0) pair (None: the origin) and an image reference: a name or {"name", "path"}."""
        y0, x0 = (float(v) for v in (offset if offset is not None else (0.0, 0.0))[:2])
        ref = {"name": image} if isinstance(image, str) else dict(image) if image else None
        if ref is not None:
            ref = {"name": ref.get("name"), "path": None if ref.get("path") is None else str(ref["path"])}
        return cls((y0, x0), ref)

    def world(self, mpp: float | None) -> list[float]:
        """The offset in the label map's world units: µm when `mpp` is known, else pixels."""
        size = float(mpp) if mpp else 1.0
        return [self.offset[0] * size, self.offset[1] * size]


def ome_metadata(placement: Placement, mpp: float | None) -> dict[str, Any]:
    """tifffile OME metadata for `placement`: the Plane position and the nucseg MapAnnotation."""
    y, x = placement.world(mpp)
    unit = "µm" if mpp else "pixel"
    values = {"Namespace": NAMESPACE, "offset_y_px": repr(placement.offset[0]),
              "offset_x_px": repr(placement.offset[1])}
    if placement.image:
        values.update({f"image_{k}": str(v) for k, v in placement.image.items() if v is not None})
    return {"Plane": {"PositionY": [y], "PositionYUnit": [unit], "PositionX": [x], "PositionXUnit": [unit]},
            "MapAnnotation": values}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_ome_placement(xml: str, mpp: float | None) -> Placement:
    """The placement an OME-XML records: the nucseg MapAnnotation's exact pixel offset, else the first Plane's
    position (µm divided by `mpp`, or in pixels), else the origin."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return Placement()
    for element in root.iter():
        if _local(element.tag) == "MapAnnotation" and element.get("Namespace") == NAMESPACE:
            values = {m.get("K"): (m.text or "") for m in element.iter() if _local(m.tag) == "M"}
            image = {k[len("image_"):]: v for k, v in values.items() if k and k.startswith("image_")}
            try:
                offset = (float(values["offset_y_px"]), float(values["offset_x_px"]))
            except (KeyError, ValueError):
                break
            return Placement.of(offset, image or None)
    plane = next((el for el in root.iter() if _local(el.tag) == "Plane"), None)
    if plane is None or plane.get("PositionX") is None or plane.get("PositionY") is None:
        return Placement()
    offset = []
    for axis in ("Y", "X"):
        value, unit = float(plane.get(f"Position{axis}", "0")), plane.get(f"Position{axis}Unit", "µm")
        if unit == "pixel":
            offset.append(value)
        elif unit in _UNIT_TO_UM and mpp:
            offset.append(value * _UNIT_TO_UM[unit] / mpp)
        else:  # a stage position we cannot turn into pixels of the image
            return Placement()
    return Placement.of(offset)
