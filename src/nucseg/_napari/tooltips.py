"""Every setting's tooltip in one place: what it does, its default, when to change it.

Defaults are read from the config classes (`TilingConfig`, `PostprocessConfig`, `FinetuneConfig`) or the chosen
model, never typed here, so a tooltip cannot drift from the value the engine uses. `apply` sets the tooltips of a
widget's settings by attribute name (a setting a widget no longer has is skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nucseg.config import FinetuneConfig, PostprocessConfig, TilingConfig


def _models_own(field: str, unit: str = "") -> Callable[[], str]:
    """The default text of a post-processing setting: the model's own value, from its config."""
    return lambda: (f"the model's own ({getattr(PostprocessConfig().resolved(), field):g}{unit} unless its config "
                    "says otherwise)")


#: key -> (what it does, the default (a callable, read when the tooltip is made), when to change it)
HELP: dict[str, tuple[str, Callable[[], Any], str]] = {
    # -- Segment ------------------------------------------------------------------------------------------------
    "image": ("The image layer to segment (an H&E slide or tile)", lambda: "the first image layer",
              "pick another image; results and probability layers are not offered"),
    "pixel_size": ("Microns per pixel of the image: the file's (fixed) or one you type", lambda: "the file's; "
                   "'unknown' when it says none (the model then assumes its own, and exports stay in pixels)",
                   "type it for a tile whose file says none (40x about 0.25, 20x about 0.5): exports and "
                   "measurements are then in µm and the image is shown in µm"),
    "allow_fluorescence": ("Segment an image that looks like fluorescence although the model is trained on "
                           "brightfield H&E", lambda: "off (such an image is refused, as nucseg predict refuses it "
                           "without --allow-fluorescence)",
                           "only with a model fine-tuned on fluorescence, or to try"),
    "model": ("The trained model: the shipped ones and your fine-tuned versions", lambda: "nucseg-default",
              "after fine-tuning, to use a version that scored better on your slides"),
    "device": ("Where the network runs", lambda: "auto (a GPU when there is one, else the CPU)",
               "to force the CPU when a GPU is busy or short of memory"),
    "tile_size": ("Side of the square the network sees at once, in pixels at the model's resolution",
                  lambda: f"{TilingConfig().tile_size} px",
                  "larger is a little faster on a CPU and needs more memory; smaller on a machine short of memory"),
    "overlap": ("Pixels shared by neighbouring tiles; predictions are blended across them",
                lambda: f"{TilingConfig().overlap} px",
                "raise it if nuclei look cut along straight lines (tile borders); lower it for speed"),
    "batch_size": ("Tiles per forward pass of the network", lambda: str(TilingConfig().batch_size),
                   "higher on a GPU with memory to spare; lower if the run fails for lack of memory"),
    "tta": ("Test-time augmentation: average the prediction over flips, about 4x slower",
            lambda: "off", "for the final figures of a small region, when a little more accuracy is worth the time"),
    "region": ("What to segment: the whole image, the part in view, or rectangles drawn in a Shapes layer",
               lambda: "whole image", "segment a field of view or drawn regions of a slide to get results quickly"),
    "shapes_layer": ("The Shapes layer whose rectangles are segmented, each on its own", lambda: "none",
                     "when the region is 'drawn rectangles'"),
    "foreground_threshold": ("Probability above which a pixel belongs to a nucleus",
                             _models_own("foreground_threshold"),
                             "lower it when pale nuclei are missed, raise it when stroma or background is taken "
                             "for nuclei; re-applied live, your edits are kept"),
    "otsu": ("Cut each image's foreground map at Otsu's threshold instead of the fixed one", lambda: "off "
             "(the model's own choice)", "when nuclei come out thin because the model is unsure at their rims"),
    "marker_threshold": ("How sure a pixel must be to seed a nucleus (distance minus contour)",
                         _models_own("marker_threshold"),
                         "lower it when touching nuclei are merged into one, raise it when one nucleus is split"),
    "min_area": ("Nuclei smaller than this many pixels (at the model's resolution) are dropped",
                 _models_own("min_area", " px"),
                 "raise it to drop debris and lymphocyte fragments, lower it to keep small nuclei"),
    "contours": ("Draw the nuclei as outlines rather than filled", lambda: "on",
                 "turn it off to see which pixels each nucleus holds while correcting"),
    # -- Evaluate -----------------------------------------------------------------------------------------------
    "truth": ("The ground-truth labels layer (annotated nuclei)", lambda: "another labels layer than the "
              "prediction", "pick the truth that belongs to the chosen image"),
    "prediction": ("The predicted labels layer to score (the one you correct)", lambda: "the newest result",
                   "to score an older result or a corrected copy"),
    "probability": ("A foreground probability map, for the pixel ROC AUC", lambda: "none",
                    "pick the result's hidden probability layer to get the AUC"),
    "eval_image": ("The image shown in the side-by-side view", lambda: "the first RGB image",
                   "when several images are open"),
    "iou": ("Objects match when their intersection over union is above this", lambda: "0.5 (the usual choice)",
            "raise it to demand tighter outlines; keep 0.5 to compare with published figures"),
    # -- Measurements -------------------------------------------------------------------------------------------
    "measure_labels": ("The nuclei layer to measure", lambda: "the newest segmentation result",
                       "to measure a corrected copy or a truth"),
    "drawn_region": ("A Shapes layer whose shapes (all together) are the drawn region", lambda: "none",
                     "draw a tumour or stroma region to get its nuclei per mm²"),
    # -- Fine-tune ----------------------------------------------------------------------------------------------
    "base_model": ("The model to fine-tune: its weights are the start, and a new version of it is made",
                   lambda: "the newest version of the default model", "to continue from a version you kept earlier"),
    "ft_device": ("Where training runs", lambda: "auto (a GPU when there is one, else the CPU)",
                  "to keep a busy GPU free, or to train on a second GPU"),
    "resume": ("Continue the last fine-tuning run that did not finish, with its saved settings",
               lambda: "off", "after a run was stopped or the viewer closed while training"),
    "mix_original": ("Mix the base model's own training data into each batch, so it does not forget it",
                     lambda: "on when the base model carries a replay set", "off only to adapt as much as possible "
                     "to slides very unlike the original data"),
    "original_data": ("A folder with images/ and labels/ to mix in", lambda: "the base model's replay set",
                      "to rehearse your own earlier training data"),
    "mix_fraction": ("Share of each batch taken from the original data", lambda: f"{FinetuneConfig().mix_original:g}",
                     "lower it to adapt faster to your slides, raise it if the new version gets worse elsewhere"),
    "validation_fraction": ("Share of the corrections kept aside to judge the new version",
                            lambda: f"{FinetuneConfig().validation_fraction:g}",
                            "keep at least one correction aside; 0 trains on all (no judgement of the result)"),
    "epochs": ("Passes of training", lambda: str(FinetuneConfig().epochs),
               "more when the validation curve still improves at the end, fewer when it turns up early"),
    "steps_per_epoch": ("Batches per pass", lambda: str(FinetuneConfig().steps_per_epoch),
                        "more with many corrections; a pass then covers more of them"),
    "learning_rate": ("Step size of the optimiser", lambda: f"{FinetuneConfig().learning_rate:g}",
                      "lower it if the validation score drops or jumps; raise it a little if nothing changes"),
    "ft_batch_size": ("Patches per training step", lambda: str(FinetuneConfig().batch_size),
                      "lower it when training runs out of memory"),
    "patch_size": ("Side of the training patches, in pixels", lambda: f"{FinetuneConfig().patch_size} px",
                   "smaller for small corrections, larger to give the model more context"),
    "loss": ("What training minimises", lambda: FinetuneConfig().loss,
             "keep the default unless you compare losses on your own validation set"),
    "augmentations": ("Random changes made to each training patch", lambda: ", ".join(FinetuneConfig().augmentations),
                      "turn one off only when your slides never vary that way"),
    "freeze_norm": ("Keep the base model's normalisation statistics", lambda: "on" if FinetuneConfig().freeze_norm
                    else "off", "forgets less of the original data, but adapts less to the new slides"),
    "tune_postprocess": ("Re-tune the watershed thresholds on the validation corrections",
                         lambda: "on" if FinetuneConfig().tune_postprocess else "off",
                         "kept only when they beat the base model's by 0.01 AJI; with one validation correction "
                         "the choice tends to overfit"),
    "threads": ("CPU threads for torch", lambda: "0 = all cores", "lower it to keep the computer usable meanwhile"),
}

#: widget attribute -> HELP key, per dock class name
ATTRIBUTES: dict[str, dict[str, str]] = {
    "FluorescenceGuard": {"allow_check": "allow_fluorescence"},
    "SegmentWidget": {"image_combo": "image", "mpp_spin": "pixel_size", "model_combo": "model", "device_combo": "device",
                      "tile_spin": "tile_size", "overlap_spin": "overlap", "batch_spin": "batch_size",
                      "tta_check": "tta", "region_combo": "region", "shapes_combo": "shapes_layer",
                      "fg_spin": "foreground_threshold", "marker_spin": "marker_threshold",
                      "min_area_spin": "min_area", "contours_check": "contours"},
    "ThresholdsBox": {"otsu_check": "otsu"},
    "EvaluateWidget": {"truth_combo": "truth", "pred_combo": "prediction", "prob_combo": "probability",
                       "image_combo": "eval_image", "iou_spin": "iou"},
    "MeasurementsWidget": {"labels_combo": "measure_labels", "shapes_combo": "drawn_region"},
    "FinetuneWidget": {"model_combo": "base_model", "device_combo": "ft_device", "resume_check": "resume"},
    "FinetuneSettings": {"mix_check": "mix_original", "original_edit": "original_data", "mix_spin": "mix_fraction",
                         "val_spin": "validation_fraction", "epochs_spin": "epochs", "steps_spin": "steps_per_epoch",
                         "lr_spin": "learning_rate", "batch_spin": "ft_batch_size", "patch_spin": "patch_size",
                         "loss_combo": "loss", "freeze_norm_check": "freeze_norm", "tune_check": "tune_postprocess",
                         "threads_spin": "threads"},
}


def tooltip(key: str, default: str | None = None) -> str:
    """The tooltip of setting `key`: what it does, its default (`default` overrides the configured one), when to
    change it."""
    what, configured, when = HELP[key]
    return f"{what}.\nDefault: {default if default is not None else configured()}.\nWhen to change it: {when}."


def apply(widget: Any, kind: str | None = None) -> None:
    """Set the tooltips of `widget`'s settings (by attribute name, per `ATTRIBUTES[kind or its class]`)."""
    names = ATTRIBUTES.get(kind or type(widget).__name__)
    if names is None:
        for klass in type(widget).__mro__:  # a dock subclass (`docks`): its widget's names
            names = ATTRIBUTES.get(klass.__name__)
            if names is not None:
                break
    for attribute, key in (names or {}).items():
        target = getattr(widget, attribute, None)
        if target is not None:
            target.setToolTip(tooltip(key))
    if isinstance(getattr(widget, "aug_checks", None), dict):  # the fine-tune augmentations, one box each
        for check in widget.aug_checks.values():
            check.setToolTip(tooltip("augmentations"))
    for part in PARTS:  # settings grouped in a child widget
        child = getattr(widget, part, None)
        if child is not None and type(child).__name__ in ATTRIBUTES:
            apply(child)


#: child widgets holding settings of their own
PARTS = ("thresholds", "settings", "fluorescence")
