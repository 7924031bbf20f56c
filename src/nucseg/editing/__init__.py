"""Correcting instance labels: pure functions on label arrays, and an undo history that owns every change.

* `tools`: delete, merge, split (two seeds or a cut line) and add a given mask, each returning an `Edit` (the
  pixels it changes and their new ids), refused with a readable `EditRefused` when it cannot apply;
* `grow`: a nucleus around a click, grown from the model's own foreground / contour / distance maps with the
  engine's post-processing (`nucseg.inference.postprocess`), for the "add a nucleus" tool;
* `maps`: where those maps come from: a cached prediction, or the engine run on a small window (cached);
* `history`: `LabelEditor`, the one linear undo / redo history of a labels map: tool actions, brush strokes and
  threshold re-applications alike, with the pixels the person edited (`edited`), so that undo and redo always
  return to a state that existed and never bring back an id that by then names another nucleus.

Nothing here imports Qt or napari; the napari dock only binds these to clicks and keys.
"""
