"""Colour: the slide's ICC profile applied to its pixels, and brightfield versus fluorescence.

ICC: like napari-wsi and QuPath, pixels are transformed from the profile the scanner embedded to sRGB with
LittleCMS (Pillow's ImageCms), rendering intent as the profile asks. A profile that is sRGB already (wsidicom
and many converters embed one) maps every colour to itself: it is recorded but not applied, so the pixels stay
byte for byte what the file holds.

Modality: the default model segments brightfield H&E (dark nuclei on bright glass). A fluorescence slide
(bright nuclei on black) must be flagged. The file's own word wins (DICOM OpticalPath illumination, OME
IlluminationType / ContrastMethod); else the pixels of a small level decide: fluorescence when most of them are
near black, which no brightfield slide is (glass is white, stained tissue mid-grey at its darkest).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

#: luma below this (0..255) is "near black"
DARK_LUMA = 50
#: a slide with at least this fraction of near-black pixels at a small level is called fluorescence
DARK_FRACTION = 0.5
#: side of the sample the pixel test reads (a coarse level, or a thumbnail, of at most this many px per side)
SAMPLE_SIDE = 1024
#: larger levels are sampled on a GRID x GRID grid of windows of GRID_WINDOW px
GRID, GRID_WINDOW = 5, 128


class IccTransform:
    """The transform from an embedded ICC profile to sRGB, applied to (h, w, 3) uint8 blocks.

    Args:
        profile: the profile's bytes.
    """

    def __init__(self, profile: bytes):
        from PIL import ImageCms

        self.source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        self.description = (ImageCms.getProfileDescription(self.source) or "").strip() or "unnamed profile"
        intent = ImageCms.getDefaultIntent(self.source)
        # NOCACHE: LittleCMS's one-colour cache is what makes a transform unsafe to share between the threads
        # that read dask blocks at once
        self._transform = ImageCms.buildTransform(self.source, ImageCms.createProfile("sRGB"), "RGB", "RGB",
                                                  renderingIntent=intent, flags=ImageCms.Flags.NOCACHE)
        grid = np.arange(0, 256, 5, dtype=np.uint8)
        probe = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 52, 3)
        self.identity = bool(np.array_equal(self._apply(probe), probe))

    def _apply(self, rgb: np.ndarray) -> np.ndarray:
        from PIL import Image, ImageCms

        return np.asarray(ImageCms.applyTransform(Image.fromarray(np.ascontiguousarray(rgb), "RGB"), self._transform))

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """`rgb` in sRGB (returned unchanged when the profile is sRGB already)."""
        return rgb if self.identity or not rgb.size else self._apply(rgb)

    def info(self) -> dict[str, Any]:
        """``{"description", "applied"}`` for `Slide.icc`."""
        return {"description": self.description, "applied": not self.identity}


def icc_transform(profile: bytes | None) -> IccTransform | None:
    """An `IccTransform` for the bytes, or None when there are none or LittleCMS cannot parse them."""
    if not profile:
        return None
    from PIL import ImageCms

    try:
        return IccTransform(bytes(profile))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):  # a broken profile: keep the raw pixels
        return None


def icc_of(transform: IccTransform | None) -> tuple[Any, dict[str, Any] | None]:
    """(the transform to apply or None, the `Slide.icc` record or None)."""
    if transform is None:
        return None, None
    return (None if transform.identity else transform), transform.info()


def dark_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels whose luma (Rec. 601) is below `DARK_LUMA`."""
    rgb = np.asarray(rgb, dtype=np.float32)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return float((luma < DARK_LUMA).mean()) if luma.size else 0.0


def modality_from_pixels(rgb: np.ndarray, where: str) -> tuple[str, str]:
    """("brightfield" | "fluorescence", the reason) from a small RGB sample described by `where`."""
    frac = dark_fraction(rgb)
    kind = "fluorescence" if frac >= DARK_FRACTION else "brightfield"
    background = "dark background" if kind == "fluorescence" else "bright background"
    return kind, f"{background}: {frac:.0%} of the pixels of {where} are near black"


def slide_modality(slide: Any) -> tuple[str, str]:
    """("brightfield" | "fluorescence", why) for a `Slide`: its metadata's word, else its pixels.

    The pixels read are the coarsest level when it is at most `SAMPLE_SIDE` px per side, else a thumbnail
    associated image, else a grid of small windows of the coarsest level, so this stays cheap on any slide.
    """
    if slide.modality:
        return slide.modality, slide.modality_reason
    level = len(slide.levels) - 1
    h, w = slide.level_shape(level)
    if max(h, w) <= SAMPLE_SIDE:
        sample, where = slide.read_region(level, 0, 0, h, w), f"level {level} ({w} x {h})"
    elif "thumbnail" in slide.associated:
        sample, where = slide.read_associated("thumbnail"), "the thumbnail"
    else:  # a big single level: a grid of small windows (a strided view would decode every tile)
        n, side = GRID, min(GRID_WINDOW, h, w)
        windows = [slide.read_region(level, round(i * (h - side) / (n - 1)), round(j * (w - side) / (n - 1)), side, side)
                   for i in range(n) for j in range(n)]
        sample = np.concatenate(windows, axis=0)
        where = f"level {level} ({n} x {n} windows of {side} px)"
    kind, reason = modality_from_pixels(sample, where)
    slide.modality, slide.modality_reason = kind, reason
    return kind, reason
