"""_napari: the napari plugin (the only package that imports napari and Qt)."""

from nucseg.models.device import passive_thread_waits

passive_thread_waits()  # before a widget's run imports torch: its threads share the cores with the GUI thread
