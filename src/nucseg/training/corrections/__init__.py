"""The corrections a person made, kept to fine-tune on: image / instance-label pairs with where they came from.

* `entry`: one stored pair (`CorrectionEntry`: its files, provenance and reviewed region) and the checks a
  pair passes before it is stored (`check_pair`, `check_reviewed`).
* `store`: the store on disk (`CorrectionStore`: add, list, remove to the trash, undo, export) and the
  `corrections_changed` signal.
* `reviewed_regions`: which pixels a person's edits vouch for (`edit_neighbourhood`) and the boxes saved around
  them (`region_boxes`, `merge_boxes`).

Reviewed regions: fine-tuning learns only from labels a person checked: the regions the person marked as reviewed,
and the neighbourhood of what the person changed (`edit_neighbourhood`: the edited nuclei and the background
within `EDIT_MARGIN_PX` of them, never a nucleus nobody touched). An entry saved with a reviewed mask
trains inside the mask only; one saved as reviewed as a whole trains everywhere; an entry with neither (saved
before reviewed regions existed, or added through the API without saying) is *unreviewed*: `pairs` leaves it
out until the person marks it reviewed (`mark_reviewed`) — it is never taken as truth by default.
"""
