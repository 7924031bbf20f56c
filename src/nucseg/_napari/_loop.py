"""Whether code runs inside the GUI's event loop: a click, a menu, a drag and drop in napari's window.

There, slow work goes to a worker and its result arrives later (opening a slide, exporting, side by side); called
from a script, a notebook or a test outside any event loop (``viewer.open(...)`` before ``napari.run()``), the same
calls finish before they return, as napari's API promises them to.
"""

from __future__ import annotations


def in_event_loop() -> bool:
    """True on the GUI thread while an event loop runs (Qt's loop level above 0)."""
    from qtpy.QtCore import QCoreApplication, QThread

    app = QCoreApplication.instance()
    thread = QThread.currentThread()
    return app is not None and thread is app.thread() and thread.loopLevel() > 0
