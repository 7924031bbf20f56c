"""Saving a labels layer goes to the writer its typed file name asks for, and never drops its pixel size.

Why this exists (napari 0.9, npe2 0.10): File > Save Selected Layers offers one filter per compatible writer and
passes the writer of the *selected filter* to ``LayerList.save(path, _writer=...)``, which runs it whatever name
was typed. For a labels layer the first filter is "napari builtins labels", so typing ``nuclei.geojson``,
``nuclei.csv`` or ``nuclei.zarr`` failed ("save failed": the builtin writer knows no such extension) and
``nuclei.ome.tif`` was written by napari's plain TIFF writer, without the pixel size. npe2 itself already matches a
typed name to the writer with the longest matching extension (``PluginManager.get_writer``: ``.ome.tif`` beats
``.tif``) when no writer is forced, but the dialog always forces one; the manifest cannot change the dialog's
order (builtins register first and every labels writer has the same sort key), and napari's
``plugins.extension2writer`` setting is declared but read nowhere in napari 0.9.

So `install` wraps ``napari.plugins.io.save_layers`` (which ``LayerList.save``, the save dialog and ``Layer.save``
all call) once, when the plugin is first imported, with two rules for ONE labels layer saved without an explicit
``plugin=``:

1. The typed extension wins over the dialog's filter: when the forced writer does not match the file name, or
   another compatible writer matches a longer extension (npe2's own rule), npe2's choice for the name is used.
2. A labels layer that carries a pixel size (``metadata["mpp"]``, or a square scale in length units) is never
   written by napari's builtin label writer, which drops it: ``.tif`` / ``.tiff`` go to this plugin's OME-TIFF
   writer (PhysicalSize and position written), other extensions of that writer are refused with one line naming
   the formats that keep the size.

Everything else (other layer types, several layers, an explicit ``plugin=``) is passed on unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from typing import Any

PLUGIN = "napari-nucseg"
#: napari's builtin labels writer (a plain TIFF / imageio file: no pixel size)
BUILTIN_LABELS_WRITER = "napari.write_labels"
OME_TIFF_COMMAND = f"{PLUGIN}.write_labels_ome_tiff"
TIFF_SUFFIXES = (".tif", ".tiff")
#: what keeps the pixel size, for the refusal message
SIZED_FORMATS = ".ome.tif / .tif, .zarr, .geojson or .csv"


@dataclasses.dataclass(frozen=True)
class Route:
    """The writer to use (None: let npe2 choose by the file name), or a refusal message."""

    writer: Any
    refusal: str | None = None


def _matched_length(writer: Any, filename: str) -> int:
    """Length of the longest of `writer`'s extensions that `filename` ends with (0: none; -1: no writer)."""
    if writer is None:
        return -1
    return max((len(e) for e in writer.filename_extensions if filename.endswith(e.lower())), default=0)


def _our_writer(command: str) -> Any:
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    return next(w for w in manifest.contributions.writers or () if w.command == command)


def _pixel_size(layer: Any) -> float | None:
    from .writers import layer_mpp

    return layer_mpp({"metadata": layer.metadata, "scale": layer.scale, "units": layer.units})


def route(path: Any, layers: list[Any], plugin: str | None, writer: Any) -> Route:
    """The writer `save_layers` should use for `layers` at `path` (see the module docstring)."""
    if plugin is not None or len(layers) != 1 or getattr(layers[0], "_type_string", "") != "labels":
        return Route(writer)
    from npe2 import PluginManager

    filename = os.path.basename(os.fspath(path)).lower()
    by_name, _ = PluginManager.instance().get_writer(os.fspath(path), ["labels"])
    chosen = writer
    if by_name is not None and (writer is None or _matched_length(writer, filename) < _matched_length(by_name, filename)):
        chosen = by_name  # rule 1: the typed extension wins
    command = getattr(chosen, "command", None)
    if command == BUILTIN_LABELS_WRITER and (mpp := _pixel_size(layers[0])):
        if filename.endswith(TIFF_SUFFIXES):
            return Route(_our_writer(OME_TIFF_COMMAND))  # rule 2: keep the pixel size
        return Route(None, f"{os.fspath(path)}: napari's label writer would drop the pixel size of "
                           f"{layers[0].name!r} ({mpp:g} µm/px); save it as {SIZED_FORMATS}")
    return Route(chosen)


def install() -> None:
    """Wrap ``napari.plugins.io.save_layers`` with `route` (once; later calls do nothing)."""
    import napari.plugins.io as io

    if getattr(io.save_layers, "_nucseg_routed", False):
        return
    original = io.save_layers

    @functools.wraps(original)
    def save_layers(path: Any, layers: list[Any], *, plugin: str | None = None, _writer: Any = None) -> list[str]:
        chosen = route(path, list(layers), plugin, _writer)
        if chosen.refusal is not None:
            warnings.warn(chosen.refusal, stacklevel=2)  # the save dialog shows it under "save failed"
            return []
        return original(path, layers, plugin=plugin, _writer=chosen.writer)

    save_layers._nucseg_routed = True  # type: ignore[attr-defined]
    io.save_layers = save_layers
