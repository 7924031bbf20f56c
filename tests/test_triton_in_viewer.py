"""A model built after a napari window exists must not crash the process (Triton's LLVM vs Mesa's LLVM)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gui

SCRIPT = """
import numpy as np, napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=True)
viewer.add_image(np.zeros((16, 16)))
QApplication.processEvents()
import nucseg._napari.segment_widget  # what napari imports when the Segment widget is opened
import torch
from nucseg.models.build import build_network
from nucseg.models.registry import resolve_model
net = build_network(resolve_model("unet-mobilenet_v2")).eval()
with torch.inference_mode():
    print("out", tuple(net(torch.zeros(1, 3, 64, 64)).shape))
"""


def test_building_a_model_inside_a_running_viewer_does_not_crash():
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (pytest-xvfb provides one)")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "QT_API": "pyqt6"})
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "out (1, " in done.stdout
