"""Keep torch's Triton from crashing a running viewer.

CUDA builds of torch import Triton (torchvision and segmentation-models-pytorch pull it in through
``torch._dynamo``). Triton's ``libtriton`` carries its own LLVM; once Mesa's OpenGL driver (llvmpipe, radeonsi,
Intel) has loaded the system's libLLVM, as it has in any napari window on such a machine, the two clash and the
process dies with a segmentation fault inside libtriton's initialisers. Loading libtriton with ``RTLD_DEEPBIND``
makes it bind to its own symbols. It has to happen before torch imports Triton, so the widgets that run models
call `isolate_triton_before_torch` when they are imported: Triton is then loaded so at the moment torch is first
imported, and not at all in a viewer that never imports torch (on the CPU, ONNX Runtime runs the models and
training runs in a process of its own), whose heap it would grow by 17 k objects for every full garbage
collection to walk (docs/VIEWER.md).
"""

from __future__ import annotations

import contextlib
import importlib.abc
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


class _IsolateBeforeTorch(importlib.abc.MetaPathFinder):
    """Runs `isolate_triton` when torch is first imported, then steps out of the import system."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
            isolate_triton()
        return None  # the import itself goes on as usual


def isolate_triton_before_torch() -> None:
    """`isolate_triton` when torch is first imported in this process (at once if it already is)."""
    if "torch" in sys.modules:
        isolate_triton()
    elif not any(isinstance(finder, _IsolateBeforeTorch) for finder in sys.meta_path):
        sys.meta_path.insert(0, _IsolateBeforeTorch())
