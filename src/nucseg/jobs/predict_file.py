"""Segment one input file and write its outputs atomically: the work unit of a batch, in-process or on a worker.

Every output is first written under a hidden temporary name in the output folder and renamed into place only when
all of them are complete, `<stem>_predict.json` last. So a run that fails (or is killed) never destroys earlier
outputs, and an input whose JSON is present was finished: `nucseg predict --resume` relies on that.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.config import InferenceConfig
from nucseg.errors import StoreError
from nucseg.io.outputs import OUTPUT_NAMES, summary_name, write_failure

#: output formats (their file names: `nucseg.io.outputs.OUTPUT_NAMES`)
FORMATS = tuple(OUTPUT_NAMES)
#: `mpp_from` in <stem>_predict.json when neither the file nor --mpp gave the pixel size
MPP_UNKNOWN = "unknown"
#: version of the <stem>_predict.json layout (checked by --resume)
SUMMARY_VERSION = 2


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    """What every input of a batch is segmented with (picklable: it travels to Dask workers).

    Attributes:
        config: model, device, tiling, thresholds.
        formats: outputs to write, among `FORMATS`.
        region: (y, x, h, w) in level-0 pixels, or None for everything.
        mpp: microns per pixel for inputs whose file does not say (``--mpp``); None leaves them in pixel units.
    """

    config: InferenceConfig
    formats: tuple[str, ...] = ("tif",)
    region: tuple[int, int, int, int] | None = None
    mpp: float | None = None
    allow_fluorescence: bool = False  # slides that look like fluorescence are refused (the model is for H&E)
    classifier: str | None = None  # a saved nucleus classifier's folder: adds each nucleus's class to the outputs

    def request(self) -> dict[str, Any]:
        """The settings as recorded in <stem>_predict.json, to recognise a finished output (JSON-normalised)."""
        request = {"config": self.config.to_dict(), "region": self.region, "mpp_option": self.mpp}
        if self.classifier:
            request["classifier"] = self.classifier
        return json.loads(json.dumps(request))


@dataclasses.dataclass(frozen=True)
class BatchItem:
    """One input of a batch and where its outputs go.

    Attributes:
        input: the input file (absolute).
        stem: unique name its outputs start with.
        out: the output folder.
        stem_note: why `stem` differs from the file's own name, when it does (recorded in the JSON).
        replace: outputs already there may be replaced (``--overwrite``, or leftovers of an unfinished run).
    """

    input: Path
    stem: str
    out: Path
    stem_note: str | None = None
    replace: bool = False

    def outputs(self, formats: tuple[str, ...] | list[str]) -> dict[str, Path]:
        return {f: self.out / OUTPUT_NAMES[f].format(stem=self.stem) for f in formats}

    @property
    def summary_path(self) -> Path:
        return self.out / summary_name(self.stem)


#: inputs up to this size are hashed whole to recognise them; larger ones by `FINGERPRINT_BLOCKS` samples
FINGERPRINT_WHOLE = 32 * 2**20
FINGERPRINT_BLOCKS, FINGERPRINT_BLOCK = 64, 64 * 2**10


def _file_fingerprint(path: Path, digest: Any) -> dict[str, Any]:
    """Feed `path`'s content (whole, or evenly spaced blocks of a large file) into `digest`; returns size and, for a
    sampled file, its modification time (a change between two samples then still shows)."""
    stat = path.stat()
    size = stat.st_size
    with open(path, "rb") as fh:
        if size <= FINGERPRINT_WHOLE:
            for block in iter(lambda: fh.read(2**20), b""):
                digest.update(block)
            return {"bytes": size}
        step = (size - FINGERPRINT_BLOCK) / (FINGERPRINT_BLOCKS - 1)
        for k in range(FINGERPRINT_BLOCKS):  # the first and last blocks included (headers, IFD chains at the end)
            fh.seek(int(k * step))
            digest.update(fh.read(FINGERPRINT_BLOCK))
    return {"bytes": size, "mtime_ns": stat.st_mtime_ns}


def input_fingerprint(path: Path) -> dict[str, Any]:
    """What identifies an input's content, recorded in <stem>_predict.json and compared by ``--resume``: its size and
    the sha256 of its bytes (of 64 evenly spaced 64 KiB blocks and the modification time when larger than 32 MiB);
    a folder input (DICOM WSI) by the same of each file in it."""
    try:
        return _fingerprint(Path(path))
    except OSError as err:
        from nucseg.io.base import read_failure

        raise read_failure(Path(path), err) from err


def _fingerprint(path: Path) -> dict[str, Any]:
    import hashlib

    digest = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        parts = []
        for file in files:
            digest.update(file.name.encode() + b"\0")
            parts.append(_file_fingerprint(file, digest))
        return {"files": len(files), "bytes": sum(p["bytes"] for p in parts), "sha256": digest.hexdigest(),
                "mtime_ns": max((p.get("mtime_ns", 0) for p in parts), default=0)}
    return {**_file_fingerprint(path, digest), "sha256": digest.hexdigest()}


def local_worker() -> dict[str, Any]:
    """Who runs an input in-process: this host and process."""
    return {"name": "in-process", "address": None, "host": socket.gethostname(), "pid": os.getpid()}


def _temporary(path: Path, token: str) -> Path:
    return path.with_name(f".{path.name}.{token}.partial")


def leftovers(item: BatchItem) -> list[Path]:
    """Temporary files of earlier, unfinished runs of this item: ours (`.NAME.TOKEN.partial`), the writers' own
    inside them (`..NAME.TOKEN.partial.X.tmp`) and old folders moved aside while replacing (`.NAME.X.old`)."""
    names = [p.name for p in item.outputs(FORMATS).values()] + [item.summary_path.name, f"{item.stem}.scratch.zarr"]
    patterns = (".{}.*.partial", "..{}.*.partial.*", ".{}.*.old")
    return [p for name in names for pattern in patterns for p in item.out.glob(pattern.format(name))]


def remove_path(path: Path) -> None:
    """Remove a file or a folder (a zarr store) if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def commit_outputs(pairs: list[tuple[Path, Path]], summary: tuple[Path, Path], replace: bool) -> None:
    """Rename complete temporary outputs into place, the summary JSON last.

    When replacing, the old JSON goes first: an input caught between two renames has no JSON and counts as
    unfinished (never as finished with a mix of old and new files)."""
    targets = [final for _, final in [*pairs, summary]]
    taken = [t for t in targets if t.exists()]
    if taken and not replace:  # appeared while this input ran: something else writes into the folder
        raise StoreError(f"{taken[0]} appeared while this input was segmented (another program writes into "
                         f"{taken[0].parent}?) and is kept; choose another --out, or run again with --overwrite to "
                         "replace it")
    try:
        if replace and summary[1].exists():
            summary[1].unlink()
        from nucseg.io.export import replace_into_place

        for tmp, final in [*pairs, summary]:
            replace_into_place(tmp, final)
    except OSError as err:
        raise write_failure(targets[0], err) from err


def input_units(slide, settings: BatchSettings) -> tuple[float | None, str]:
    """Microns per pixel of an input and where they come from: the file, else --mpp, else unknown (outputs then
    stay in pixels and say so)."""
    if slide.mpp:
        return slide.mpp, "file"
    if settings.mpp:
        return settings.mpp, "--mpp"
    return None, MPP_UNKNOWN


def is_big(slide, settings: BatchSettings, mpp: float | None) -> bool:
    """Whether labels stream into a zarr store rather than memory (`nucseg.inference.plan.streams_to_disk`, the
    widgets' rule too); `mpp`: the input's, from `input_units`."""
    from nucseg.inference.plan import streams_to_disk
    from nucseg.models.registry import resolve_model

    return streams_to_disk(slide.shape, len(slide.downsamples) > 1, mpp, settings.region,
                           settings.config.block_size, resolve_model(settings.config.model).mpp)


class OutputSet:
    """The temporary files of one input's outputs, written in full and then committed together (or removed).

    Use as a context manager: on exit, whatever was not committed is removed.
    """

    def __init__(self, item: BatchItem, settings: BatchSettings):
        self.item, self.settings = item, settings
        token = uuid.uuid4().hex[:8]
        self.targets = item.outputs(settings.formats)
        self.temps = {f: _temporary(p, token) for f, p in self.targets.items()}
        self.summary_tmp = _temporary(item.summary_path, token)
        self.scratch = item.out / f".{item.stem}.scratch.zarr.{token}.partial"
        self.fingerprint = input_fingerprint(item.input)  # the content read, taken before it is read

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *exc: object) -> None:
        for path in [*self.temps.values(), self.summary_tmp, self.scratch]:
            remove_path(path)

    def store(self, big: bool) -> Path | None:
        """The zarr folder labels and probabilities stream into: scratch for a big input, or None (in memory).
        The zarr output is written from the labels at the end, as an OME-NGFF label image."""
        return self.scratch if big else None

    def finish(self, result: Any, *, mpp: float | None, mpp_from: str, image: Any, slide: Any,
               worker: dict[str, Any], seconds: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the exports of `result` (a `PredictionResult`), the JSON, and rename them all into place.

        Args:
            image: the RGB pixels of the region for the CSV's and GeoJSON's intensity columns (an array, or the
                open `Slide`, read block by block), or None.
            slide: the open `Slide` the result was segmented from: its tissue mask (the engine's, kept per slide
                object) gives the density figures.
            seconds: time spent on this input so far (the export time is added).
        """
        import numpy as np

        from nucseg.io import export
        from nucseg.io.slides import suffix_of
        from nucseg.models.registry import resolve_model

        t0 = time.perf_counter()
        item, config, temps = self.item, self.settings.config, self.temps
        labels, offset = result.labels, result.region[:2]
        annotate = self._annotator(mpp)
        source = {"name": item.input.name[: len(item.input.name) - len(suffix_of(item.input))] or item.input.name,
                  "path": str(item.input.resolve())}  # where the labels lie: named as the napari reader names it
        if "tif" in temps:
            export.write_labels_ome_tiff(labels, temps["tif"], mpp=mpp, offset=offset, image=source)
        if "geojson" in temps or "csv" in temps:  # one pass: the GeoJSON carries the CSV's numbers
            export.write_nuclei_tables(labels, csv_path=temps.get("csv"), geojson_path=temps.get("geojson"),
                                       image=image, mpp=mpp, offset=offset, annotate=annotate)
        elif annotate is not None:  # classes counted without a table to write them to
            for _ in export.iter_nuclei(labels, image, mpp, offset=offset, annotate=annotate):
                pass
        if "zarr" in temps:  # OME-NGFF 0.5 labels (µm axes only when the size is known), copied block by block
            import zarr

            export.write_labels_zarr(labels, temps["zarr"], mpp=mpp, offset=offset, image=source)
            try:
                group = zarr.open_group(str(temps["zarr"]), mode="a")
                group.attrs["nucseg"] = {**group.attrs["nucseg"], "mpp_from": mpp_from}
            except OSError as err:
                raise write_failure(self.targets["zarr"], err) from err
        density = area_density(result, slide, mpp)
        summary = {
            "summary_version": SUMMARY_VERSION,
            "input": str(item.input), "input_bytes": self.fingerprint["bytes"], "input_fingerprint": self.fingerprint,
            "stem": item.stem,
            **({"stem_note": item.stem_note} if item.stem_note else {}),
            "outputs": {k: str(v) for k, v in self.targets.items()}, "nuclei": result.n_nuclei, "density": density,
            "region": list(result.region), "mpp": mpp, "mpp_from": mpp_from,
            **({} if mpp else {"segmented_at_mpp": resolve_model(config.model).mpp}),
            "model": result.model_info, "worker": worker, **(extra or {}),
            "predict_seconds": round(result.seconds, 2), "seconds": round(seconds + time.perf_counter() - t0, 2),
            "request": self.settings.request(), "config": result.config.to_dict(),  # the thresholds used
            "labels_dtype": str(np.dtype(labels.dtype)),
        }
        if annotate is not None:
            area = result.region[2] * result.region[3] * mpp * mpp / 1e6 if mpp else None
            summary["classes"] = {"classifier": self.settings.classifier, **annotate.summary(area)}
        try:
            self.summary_tmp.write_text(json.dumps(summary, indent=2))
        except OSError as err:
            raise write_failure(item.summary_path, err) from err
        commit_outputs([(temps[f], self.targets[f]) for f in self.settings.formats],
                       (self.summary_tmp, item.summary_path), item.replace)
        return summary


    def _annotator(self, mpp: float | None):
        """The nucleus-class hook of the exports when the batch has a classifier, else None."""
        if not self.settings.classifier:
            return None
        from nucseg.classify.apply import ClassAnnotator
        from nucseg.classify.examples import um_per_pixel
        from nucseg.classify.store import check_binding, load_trained
        from nucseg.models.registry import resolve_model

        trained, folder = load_trained(self.settings.classifier)
        spec = resolve_model(self.settings.config.model)
        check_binding(trained.data, spec, f"classifier {folder}")
        return ClassAnnotator(trained, um_per_pixel(mpp, spec.mpp))


def area_density(result: Any, slide: Any, mpp: float | None) -> dict[str, Any]:
    """The nuclei of a result per area of tissue (`nucseg.metrics.density`) over its region of the open `slide`
    (the whole slide's tissue mask, as the engine skipped glass by it); mm² only when `mpp` is known."""
    from nucseg.metrics.density import summarize, tissue_map

    tissue = tissue_map(slide, result.region)
    return summarize(np.zeros((0, 2)), tissue, mpp, count=result.n_nuclei).to_dict()


def iter_predict_file(item: BatchItem, settings: BatchSettings, worker: dict[str, Any] | None = None
                      ) -> Generator[Any, None, dict[str, Any]]:
    """Segment `item.input` and write its outputs (see the module docstring).

    Yields:
        `nucseg.inference.predict.PredictProgress` records.

    Returns:
        The summary written to `<stem>_predict.json`.
    """
    from nucseg.inference.predict import iter_predict
    from nucseg.io.slides import open_slide, require_brightfield

    t0 = time.perf_counter()
    with OutputSet(item, settings) as outputs, open_slide(item.input) as slide:
        require_brightfield(slide, settings.allow_fluorescence)
        mpp, mpp_from = input_units(slide, settings)
        big = is_big(slide, settings, mpp)
        result = yield from iter_predict(slide, settings.config, mpp=mpp, region=settings.region,
                                         out=outputs.store(big))
        image = slide.read_region(0, *result.region) if not big else slide  # a slide: read block by block
        return outputs.finish(result, mpp=mpp, mpp_from=mpp_from, image=image, slide=slide,
                              worker=worker or local_worker(),
                              seconds=time.perf_counter() - t0)
