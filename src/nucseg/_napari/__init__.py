"""The napari face of nucseg: reader, writers, dock widgets (everything here may import Qt and napari).

Importing it routes napari's layer saving by the typed file name (`save_routing`): a nuclei layer saved as
``.geojson``, ``.csv``, ``.zarr`` or ``.ome.tif`` reaches this plugin's writers whatever filter the save dialog
shows, and a labels layer with a pixel size is never written without it.
"""

from .save_routing import install as _install_save_routing

_install_save_routing()

from nucseg.models.device import passive_thread_waits  # noqa: E402

passive_thread_waits()  # before a widget's run imports torch: its threads share the cores with the GUI thread
