"""Keep torch's Triton from crashing a running viewer.

CUDA builds of torch import Triton (torchvision and segmentation-models-pytorch pull it in through
``torch._dynamo``). Triton's ``libtriton`` carries its own LLVM; once Mesa's OpenGL driver (llvmpipe, radeonsi,
Intel) has loaded the system's libLLVM, as it has in any napari window on such a machine, the two clash and the
process dies with a segmentation fault inside libtriton's initialisers. Loading libtriton with ``RTLD_DEEPBIND``
makes it bind to its own symbols. It has to happen before torch imports Triton, so the widgets that run models
call `isolate_triton` when they are imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def isolate_triton() -> None:
    """Import Triton with deep binding, if it is installed and not yet imported (Linux only)."""
    if "triton" in sys.modules or not hasattr(os, "RTLD_DEEPBIND"):
        return
    try:
        if importlib.util.find_spec("triton") is None:
            return
    except (ImportError, ValueError):
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken Triton is torch's concern: it runs without it
        pass
    finally:
        sys.setdlopenflags(flags)
