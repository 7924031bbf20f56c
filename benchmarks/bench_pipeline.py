"""(a) The whole pipeline vs a model-only forward over the same tiles, and (b) vs MONAI's sliding window.

Pipeline = read, normalise, batch, forward, blend, watershed post-processing, labels out. Model-only = just the
forward passes over the very same tiles and batches (the engine's plan: `plan_prediction`), plus the encoder pass over the image's gate windows that
fixes the squeeze-excitation gates (part of how the model is run, see nucseg.inference.calibration).
MONAI = `sliding_window_inference` with the same network, tile and overlap (gaussian blending), as a user would
call it: the smp network with its weights loaded, in eval mode. Our pipeline prepares that network for inference
(BatchNorm folded into the convolutions, channels_last on the CPU); MONAI is also timed with the prepared
network, for a like-for-like figure on everything but that. The seam measure is the mean absolute difference of
the foreground probability from a single whole-image forward pass (for MONAI, of the network as handed to it;
for ours, with the image's gates), on pixels within 2 px of a tile border, divided by the same
difference elsewhere (1.0 = no visible seam), and that seam difference itself. Times are the fastest of 7
interleaved rounds; the `_paired` ratios are the median over rounds of the two times in the same round; and the
pipeline's time outside the network (its network calls clocked inside the same run) is the overhead free of the
noise between two separate runs.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from _common import default_model_name, emit, he_tile, interleaved_times, paired_ratio
from nucseg.config import InferenceConfig, TilingConfig
from nucseg.inference import tile_store as predict_module  # where the engine calls the network
from nucseg.inference.calibration import network_for_image
from nucseg.inference.forward import predict_batch, to_input_tensor
from nucseg.inference.plan import plan_prediction
from nucseg.inference.predict import predict
from nucseg.models.build import build_network, load_network, load_weights
from nucseg.models.registry import resolve_model

TILE, OVERLAP, BATCH = 512, 64, 4


def seam_measure(prob: np.ndarray, whole: np.ndarray, tiles) -> tuple[float, float]:
    """Mean |prob - whole| on pixels within 2 px of a tile border, and its ratio to the same elsewhere."""
    seam = np.zeros(whole.shape, bool)
    for t in tiles:
        for edge in (t.y0, t.y1):
            seam[max(edge - 2, 0) : edge + 2, t.x0 : t.x1] = True
        for edge in (t.x0, t.x1):
            seam[t.y0 : t.y1, max(edge - 2, 0) : edge + 2] = True
    seam[:4], seam[-4:], seam[:, :4], seam[:, -4:] = False, False, False, False  # image borders are no seams
    diff = np.abs(prob - whole)
    return float(diff[seam].mean()), float(diff[seam].mean() / max(diff[~seam].mean(), 1e-9))


def main() -> None:
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(2)
    name = default_model_name()
    spec = resolve_model(name)
    device = torch.device("cpu")
    net = load_network(spec, device)
    image = he_tile(6)[:992, :992]  # a multiple of 32, so the whole-image pass needs no padding
    config = InferenceConfig(model=name, device="cpu", tiling=TilingConfig(TILE, OVERLAP, BATCH))
    plan = plan_prediction(image, config)  # the tiles and batches the pipeline runs
    tiles = plan.tiles
    # their pixels, read before timing (reading is the pipeline's work, not the model's)
    batches = [np.stack([plan.source.read(t.y0, t.x0, t.y1 - t.y0, t.x1 - t.x0) for t in (tiles[i] for i in batch)])
               for batch in plan.batches]

    def model_only():
        gated = network_for_image(net, image, spec, device)
        for pixels in batches:
            predict_batch(gated, pixels, spec, device)

    # the pipeline's own network time, clocked inside it: what it spends outside the network (reading, batching,
    # blending, watershed) is then measured in the same run, free of the noise between two separate runs
    network_s: list[float] = []

    def clocked(fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            network_s[-1] += time.perf_counter() - t0
            return out
        return run

    predict_module.predict_batch = clocked(predict_module.predict_batch)
    predict_module.image_network = clocked(predict_module.image_network)
    result = {}
    pipeline_s: list[float] = []

    def pipeline():
        network_s.append(0.0)
        t0 = time.perf_counter()
        result["r"] = predict(image, config)
        pipeline_s.append(time.perf_counter() - t0)

    x = to_input_tensor(image[None], spec, device).contiguous()
    users_net = build_network(spec)
    load_weights(users_net, spec)
    users_net.eval()

    def monai(predictor):
        def run():
            with torch.inference_mode():
                result["m"] = torch.sigmoid(sliding_window_inference(
                    x, roi_size=(TILE, TILE), sw_batch_size=BATCH, predictor=predictor, overlap=OVERLAP / TILE,
                    mode="gaussian"))
        return run

    times = interleaved_times({
        "monai": monai(users_net),  # the network as a user hands it to MONAI
        "monai_prepared": monai(net),  # the network our pipeline runs (folded, channels_last weights)
        "model_only": model_only, "pipeline": pipeline,
    }, repeats=7)
    best = {name: min(t) for name, t in times.items()}
    monai(users_net)()  # its output for the seam measure
    t_monai, t_monai_cl, t_model, t_pipe = best["monai"], best["monai_prepared"], best["model_only"], best["pipeline"]
    with torch.inference_mode():
        x_cl = to_input_tensor(image[None], spec, device)
        whole = torch.sigmoid(network_for_image(net, image, spec, device)(x_cl))[0, 0].numpy()
        whole_users = torch.sigmoid(users_net(x))[0, 0].numpy()
    ours = result["r"].probabilities[0]
    theirs = result["m"][0, 0].numpy()
    seam_nucseg, seam_monai = seam_measure(ours, whole, tiles), seam_measure(theirs, whole_users, tiles)
    emit("pipeline", {
        "model": name, "image": list(image.shape[:2]), "tile": plan.tile_size, "overlap": plan.overlap, "batch": BATCH,
        "tiles": len(tiles), "model_only_s": round(t_model, 3), "pipeline_s": round(t_pipe, 3),
        "monai_s": round(t_monai, 3), "pipeline_over_model_only": round(t_pipe / t_model, 3),
        "pipeline_over_model_only_paired": round(paired_ratio(times, "pipeline", "model_only"), 3),
        "pipeline_outside_network_s": round(float(np.median(np.subtract(pipeline_s, network_s))), 3),
        "pipeline_over_its_network_time": round(float(np.median(np.divide(pipeline_s, network_s))), 3),
        "monai_over_pipeline": round(t_monai / t_pipe, 3),
        "monai_over_pipeline_paired": round(paired_ratio(times, "monai", "pipeline"), 3),
        "monai_prepared_net_s": round(t_monai_cl, 3),
        "monai_prepared_net_over_pipeline": round(t_monai_cl / t_pipe, 3),
        "seam_ratio_nucseg": round(seam_nucseg[1], 3), "seam_ratio_monai": round(seam_monai[1], 3),
        "seam_diff_nucseg": round(seam_nucseg[0], 5), "seam_diff_monai": round(seam_monai[0], 5),
        "mean_abs_diff_vs_whole_nucseg": round(float(np.abs(ours - whole).mean()), 5),
        "mean_abs_diff_vs_whole_monai": round(float(np.abs(theirs - whole_users).mean()), 5),
        "nuclei": result["r"].n_nuclei,
    })


if __name__ == "__main__":
    main()
