"""What a Labels layer is for: a prediction (to correct), a ground truth (never to edit by accident), or unknown.

The rule, in order:

1. ``layer.metadata["nucseg"]["role"]``: ``"prediction"`` (set by whoever makes a prediction layer),
   ``"corrected"`` (a layer a person edited: set by `label_editing` at the first edit, undone with the last), ``"truth"`` (reference annotations: the evaluate widget's
   ground truth, label files opened as truth), ``"reviewed"`` (the reviewed-regions layer), ``"overlay"``.
2. The plugin's own markers: ``"nucseg_result"`` in the metadata (a segment result) is a prediction;
   ``"nucseg_overlay"`` an overlay.
3. The name: a word like truth, ground truth, gt, annotation(s), reference or manual says truth.
4. Otherwise unknown.

`set_role` writes rule 1's key, so a widget that makes or recognises a layer can record it for the others.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

PREDICTION, CORRECTED, TRUTH, REVIEWED, OVERLAY = "prediction", "corrected", "truth", "reviewed", "overlay"
_TRUTH_NAME = re.compile(r"(^|[^a-z])(truth|ground[ _-]?truth|gt|annotations?|annotated|reference|manual)([^a-z]|$)",
                         re.IGNORECASE)


def layer_role(layer: Any) -> str | None:
    """The role of a layer by the rule above, or None when unknown."""
    metadata = getattr(layer, "metadata", None) or {}
    own = metadata.get("nucseg")
    if isinstance(own, dict) and isinstance(own.get("role"), str):
        return own["role"]
    if metadata.get("nucseg_overlay"):
        return OVERLAY
    if "nucseg_result" in metadata:
        return PREDICTION
    if _TRUTH_NAME.search(str(getattr(layer, "name", ""))):
        return TRUTH
    return None


def set_role(layer: Any, role: str | None) -> None:
    """Record `role` in ``layer.metadata["nucseg"]["role"]`` (keeping the rest of that dict); None leaves the role
    to the other rules."""
    own = layer.metadata.get("nucseg")
    layer.metadata["nucseg"] = {**(own if isinstance(own, dict) else {}), "role": role}


def preferred_correction_layer(layers: Sequence[Any]) -> Any | None:
    """The layer a person most likely corrects: the newest corrected or predicted one, else the newest of
    unknown role; never a truth, overlay or reviewed-regions layer."""
    for wanted in ((CORRECTED, PREDICTION), (None,)):
        found = [layer for layer in layers if layer_role(layer) in wanted]
        if found:
            return found[-1]
    return None
