"""napari-nucseg: nuclei segmentation for H&E histopathology, in napari and on the command line.

Importing ``nucseg`` is cheap: it must not import torch, napari or Qt (DESIGN.md rule 1).
"""

__version__ = "0.1.0"
