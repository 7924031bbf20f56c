"""Batches on Dask distributed: a real scheduler and two worker processes on 127.0.0.1 (nucseg.jobs.distributed).

The workers run BlobNet (fake_models) through a worker plugin, the in-process runs through `install_blobnet`, so
the comparisons are exact and fast; the Ctrl-C / --resume test runs the real CLI and the shipped model.
"""

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from distributed import Client, LocalCluster, WorkerPlugin
from PIL import Image

from fake_models import blob_image, install_blobnet
from nucseg.cli import main

MODEL = ["--model", "unet-efficientnet-b0", "--quiet"]


class BlobNetOnWorkers(WorkerPlugin):
    """install_blobnet, on a worker."""

    def setup(self, worker):
        from fake_models import BlobNet
        from nucseg.models import build

        net = BlobNet().eval()
        build.load_network = lambda spec, device="cpu", *args, **kwargs: net


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.register_plugin(BlobNetOnWorkers())
        yield cluster.scheduler_address


def _rows(out):
    with open(out / "batch_summary.csv", newline="") as fh:
        return {Path(r["input"]).name: r for r in csv.DictReader(fh)}


def _features(path):
    """GeoJSON features without their ids (random UUIDs, as QuPath's)."""
    return [{k: v for k, v in f.items() if k != "id"} for f in json.loads(path.read_text())["features"]]


def test_a_scheduler_run_gives_the_in_process_outputs_from_two_workers(scheduler, tmp_path, shared_data,
                                                                       monkeypatch, capsys):
    install_blobnet(monkeypatch)
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(blob_image((110, 130), n=4 + i, seed=i)[0]).save(folder / f"t{i}.png")
    inputs = [str(folder), str(shared_data / "slides" / "broken" / "unreadable.svs")]
    common = [*inputs, *MODEL, "--format", "tif,geojson,csv", "--mpp", "0.5"]
    assert main(["predict", *common, "--out", str(tmp_path / "local")]) == 2
    assert main(["predict", *common, "--out", str(tmp_path / "dist"), "--scheduler", scheduler]) == 2
    err = capsys.readouterr().err
    assert "unreadable.svs" in err and "1 of 7 inputs failed" in err
    workers = set()
    for i in range(6):
        local, dist = tmp_path / "local", tmp_path / "dist"
        np.testing.assert_array_equal(tifffile.imread(dist / f"t{i}_labels.tif"),
                                      tifffile.imread(local / f"t{i}_labels.tif"))
        assert (dist / f"t{i}_nuclei.csv").read_bytes() == (local / f"t{i}_nuclei.csv").read_bytes()
        assert _features(dist / f"t{i}_nuclei.geojson") == _features(local / f"t{i}_nuclei.geojson")
        summary = json.loads((dist / f"t{i}_predict.json").read_text())
        assert summary["nuclei"] == 4 + i and summary["seconds"] > 0
        assert summary["worker"]["address"].startswith("tcp://127.0.0.1:")
        workers.add(summary["worker"]["name"])
    assert len(workers) == 2  # both workers took inputs
    rows = _rows(tmp_path / "dist")
    assert rows["unreadable.svs"]["status"] == "failed" and "unreadable.svs" in rows["unreadable.svs"]["error"]
    assert {rows[f"t{i}.png"]["status"] for i in range(6)} == {"done"}
    assert {rows[f"t{i}.png"]["worker"] for i in range(6)} == {str(w) for w in workers}


def test_a_slide_of_several_blocks_is_spread_over_the_workers(scheduler, tmp_path, monkeypatch):
    install_blobnet(monkeypatch)
    image, truth = blob_image((300, 330), n=40, seed=2)
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, image, photometric="rgb")
    common = [str(slide), *MODEL, "--block-size", "128", "--tile-size", "64", "--overlap", "16", "--all-tiles",
              "--format", "tif,csv"]
    assert main(["predict", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "dist"), "--scheduler", scheduler]) == 0
    labels = tifffile.imread(tmp_path / "dist" / "slide_labels.tif")
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "local" / "slide_labels.tif"))
    assert labels.max() == truth.max()
    csvs = [(tmp_path / d / "slide_nuclei.csv").read_text() for d in ("local", "dist")]
    assert csvs[0] == csvs[1]
    summary = json.loads((tmp_path / "dist" / "slide_predict.json").read_text())
    assert summary["blocks"] == 9 and sum(summary["block_workers"].values()) == 9
    assert len(summary["block_workers"]) == 2  # the blocks of one slide ran on both workers
    assert _rows(tmp_path / "dist")["slide.tif"]["worker"] in ("0+1", "1+0")
    assert not list((tmp_path / "dist").glob(".*"))  # no temporary files left


#: inputs of the interrupted batches: enough, and big enough (768 px, 64 tiles each), that a batch stopped after its
#: first output still has inputs to do even where the network is fast (ONNX Runtime on a quiet machine finished 8
#: crops of 384 px before the Ctrl-C arrived)
N_REAL = 8


def _real_tiles(folder, shared_data, n=N_REAL):
    folder.mkdir()
    paths = sorted((shared_data / "monuseg-train" / "images").glob("*.png"))
    for i in range(n):
        crop = np.asarray(Image.open(paths[i % len(paths)]).convert("RGB"))[100:868, 100:868]
        Image.fromarray(crop).save(folder / f"m{i}.png")
    return folder


def _start_and_wait_for_first_output(command, env, out):
    """Start the CLI in its own process group; return once its first input is finished."""
    # SIGINT back to its default in the child: a test run started in the background (`cmd &`, as a CI runner may)
    # inherits it ignored, and Python then never raises KeyboardInterrupt, so Ctrl-C could not be tested
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not list(out.glob("*_predict.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    return proc


def _cli(repo_root, folder, out, *extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root / "src"), os.environ.get("PYTHONPATH", "")])}
    return [sys.executable, "-m", "nucseg", "predict", str(folder), "--out", str(out), "--tile-size", "128",
            "--overlap", "32", *extra], env


@pytest.mark.slow
def test_workers_2_stopped_by_ctrl_c_then_resumed(tmp_path, shared_data, repo_root):
    """The real CLI and model: Ctrl-C after the first output stops cleanly (no process left, the finished
    outputs kept); the same command with --resume skips them and does the rest, as an in-process run would."""
    psutil = pytest.importorskip("psutil")
    folder, out = _real_tiles(tmp_path / "tiles", shared_data), tmp_path / "out"
    command, env = _cli(repo_root, folder, out, "--workers", "2", "--threads-per-worker", "1")
    proc = _start_and_wait_for_first_output(command, env, out)
    family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    _, alive = psutil.wait_procs([psutil.Process(p) for p in family if psutil.pid_exists(p)], timeout=30)
    assert not alive  # scheduler, nannies and workers all gone
    finished = {p.name[: -len("_predict.json")] for p in out.glob("*_predict.json")}
    rows = _rows(out)
    assert 1 <= len(finished) < N_REAL
    assert {n for n, r in rows.items() if r["status"] == "done"} == {f"{s}.png" for s in finished}
    assert {r["status"] for n, r in rows.items() if n[:-4] not in finished} == {"not run"}

    done = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"skipped {len(finished)} of {N_REAL} inputs" in done.stderr
    rows = _rows(out)
    assert sorted(r["status"] for r in rows.values()) == (["done"] * (N_REAL - len(finished))
                                                          + ["skipped"] * len(finished))
    assert not list(out.glob(".*"))  # temporary files of the inputs cut short are gone
    local = tmp_path / "local"
    assert main(["predict", str(folder), "--out", str(local), "--tile-size", "128", "--overlap", "32",
                 "--quiet"]) == 0
    for i in range(N_REAL):
        np.testing.assert_array_equal(tifffile.imread(out / f"m{i}_labels.tif"),
                                      tifffile.imread(local / f"m{i}_labels.tif"))


@pytest.mark.slow
def test_a_killed_job_is_finished_by_resume(tmp_path, shared_data, repo_root):
    """SIGKILL to the whole job (what a scheduler's time limit does) after the first output: no summary, maybe a
    half-written input; --resume takes only the complete ones as finished and does the rest."""
    folder, out = _real_tiles(tmp_path / "tiles", shared_data), tmp_path / "out"
    command, env = _cli(repo_root, folder, out, "--workers", "2", "--threads-per-worker", "1")
    proc = _start_and_wait_for_first_output(command, env, out)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    finished = {p.name[: -len("_predict.json")] for p in out.glob("*_predict.json")}
    resumed = subprocess.run([*_cli(repo_root, folder, out)[0], "--resume"], env=env, capture_output=True, text=True,
                             timeout=300)  # in-process this time: the outputs do not depend on where they ran
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped {len(finished)} of {N_REAL} inputs" in resumed.stderr
    rows = _rows(out)
    assert {n[:-4] for n, r in rows.items() if r["status"] == "skipped"} == finished
    assert {r["status"] for r in rows.values()} <= {"skipped", "done"} and len(rows) == N_REAL
    assert not list(out.glob(".*"))
    assert all(tifffile.imread(out / f"m{i}_labels.tif").max() > 0 for i in range(N_REAL))

def test_a_fluorescence_slide_is_refused_on_the_block_path_too(scheduler, tmp_path, shared_data, capsys):
    ndpi = shared_data / "slides" / "formats" / "hamamatsu_dapi_fluorescence.ndpi"  # several blocks: split
    assert main(["predict", str(ndpi), "--out", str(tmp_path / "o"), *MODEL, "--scheduler", scheduler]) == 2
    assert "--allow-fluorescence" in capsys.readouterr().err
    assert _rows(tmp_path / "o")[ndpi.name]["status"] == "failed"


def test_the_worker_plugin_loads_the_model_once_for_all_tasks_and_frees_it():
    from types import SimpleNamespace

    from nucseg.config import InferenceConfig
    from nucseg.inference.blocks import load_predictor
    from nucseg.jobs.distributed import ModelPlugin
    from nucseg.models import build

    build.clear_cache()
    config = InferenceConfig(model="unet-efficientnet-b0", device="cpu")
    plugin = ModelPlugin(config)
    plugin.setup(SimpleNamespace(name=0))
    assert len(build._CACHE) == 1
    net = next(iter(build._CACHE.values()))
    assert load_predictor(config).net is net and load_predictor(config).net is net  # tasks find it: no reload
    plugin.teardown(SimpleNamespace(name=0))
    assert not build._CACHE
