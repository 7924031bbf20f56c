"""Running the network on the CPU with ONNX Runtime, whose convolutions beat PyTorch's eager ones there.

Measured on 2 AVX2 cores (docs/CPU_SPEED.md): the default UNet runs 1.6-2.0x faster in ONNX Runtime, and a cached
model starts without importing segmentation-models-pytorch or building the network (4.5 s of start-up before).

The squeeze-excitation gates stay exact: each model is exported as two graphs,

- ``gates``: the encoder alone, run on a batch of windows as one image (each block's squeeze pooled over the
  batch); outputs every block's gate vector (what `nucseg.models.squeeze_excitation.pooled_gates` measures);
- ``gated``: the whole network whose gates are graph inputs, so every tile of an image runs with the image's
  gates, as `freeze_gates` does in PyTorch.

Exports are cached under the user's cache folder (``NUCSEG_CACHE``, else ``$XDG_CACHE_HOME/nucseg`` or
``~/.cache/nucseg``), never beside the weights, keyed by the weights' sha256, what defines the network in the
model's config (architecture, encoder, decoder channels, heads, gates: `network_key`) and the versions of
everything that shapes the graph. Nothing is downloaded.

Once a model's export is cached, a prediction on the CPU never imports torch (1.2 s of a 4.7 s run on a 4 MP
tile) nor segmentation-models-pytorch: `OnnxNetwork` takes and returns numpy arrays, the engine normalises,
flips and takes the sigmoid in numpy (`nucseg.inference.forward`), the device is named without torch
(`nucseg.models.device.inference_device`), and the session threads (`session_threads`) and the cache key's torch
version (`nucseg.models.device.torch_build`) are found without importing it. torch is imported only to export
(the first run of a model; the viewer makes that export in a process of its own, `nucseg.models.build.
export_in_child`), for sides the graph cannot take, and by the PyTorch runtime, GPUs and training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nucseg.config import RUNTIMES
from nucseg.models.registry import ModelSpec, sha256_of

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: bump when the exported graphs change shape or meaning, so older caches are not used (2: the ``gates`` graph
#: replaced ``calibrate``)
EXPORT_VERSION = 2
OPSET = 17
#: an export must reproduce PyTorch's logits to this (absolute), else the runtime is not used
EXPORT_TOLERANCE = 1e-3
_PROBE_SIZE = 64
_warned: set[str] = set()


class RuntimeUnavailable(Exception):
    """The runtime cannot serve this model here (not installed, export failed, outputs differ)."""


def cache_dir() -> Path:
    """The root of nucseg's cache of exported networks."""
    if os.environ.get("NUCSEG_CACHE"):
        return Path(os.environ["NUCSEG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nucseg"


def session_threads() -> int:
    """Threads of a new ONNX Runtime session: the physical cores, but no more than torch may use, so that a Dask
    worker given one thread (`--threads-per-worker`, or torch.set_num_threads) does not take every core (two
    workers on 2 cores each ran 2 threads: no faster than one worker). Without torch imported, what torch would
    take: ``MKL_NUM_THREADS``, else ``OMP_NUM_THREADS`` (ATen's ``intraop_default_num_threads``), else every
    physical core; torch is not imported for it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        allowed = torch.get_num_threads()
    else:
        allowed = physical_cores()
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the later one wins, as in ATen
            with contextlib.suppress(ValueError):
                if int(os.environ.get(name, "")) > 0:
                    allowed = int(os.environ[name])
    return max(1, min(physical_cores(), allowed))


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share one core's vector units: no gain for convolutions)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:
        allowed = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
    except ImportError:
        physical = allowed
    return max(1, min(allowed, physical))


def choose_runtime(preference: str, device: torch.device, spec: ModelSpec) -> str:
    """The runtime to use: "pytorch" or "onnxruntime".

    "auto" takes ONNX Runtime for trained models on the CPU when it is installed, PyTorch elsewhere (GPUs, and
    untrained models, whose random weights are not worth exporting and caching).
    """
    if preference not in RUNTIMES:
        from nucseg.errors import ConfigError

        raise ConfigError(f"unknown runtime {preference!r}; use one of {', '.join(RUNTIMES)}")
    if preference == "pytorch":
        return "pytorch"
    if preference == "onnxruntime":
        return "onnxruntime"
    if device.type != "cpu" or not spec.trained:
        return "pytorch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "pytorch"
    return "onnxruntime"


def warn_fallback(spec: ModelSpec, reason: str) -> None:
    """One warning per model and reason that PyTorch runs instead."""
    key = f"{spec.name}:{spec.sha256}:{reason}"
    if key not in _warned:
        _warned.add(key)
        log.warning("nucseg: ONNX Runtime not used for %s (%s); running it in PyTorch", spec.name, reason)


def _versions() -> dict[str, str]:
    import onnxruntime

    from nucseg.models.device import torch_build

    build = torch_build()  # torch.__version__ without importing torch (1.2 s)
    if build is None:
        import torch

        build = {"__version__": torch.__version__}
    return {"onnxruntime": onnxruntime.__version__, "torch": str(build["__version__"]).split("+")[0],
            "export": str(EXPORT_VERSION), "opset": str(OPSET)}


def network_key(spec: ModelSpec) -> str:
    """A short hash of what defines the network of `spec` besides its weights (architecture, encoder, decoder
    channels, heads, squeeze-excitation mode): two configs that build different graphs never share an export."""
    import hashlib

    config = spec.to_config()
    defining = {k: config.get(k) for k in ("architecture", "encoder", "decoder_channels", "heads", "squeeze_excitation")}
    return hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:12]


def export_folder(spec: ModelSpec, sha256: str) -> Path:
    """Where the exported graphs of weights `sha256` with the network of `spec` live for the installed versions."""
    v = _versions()
    tag = f"ort{v['onnxruntime']}-torch{v['torch']}-e{v['export']}"
    return cache_dir() / "onnx" / f"{sha256[:32]}-{network_key(spec)}-{tag}"


# --- export ---------------------------------------------------------------------------------------------------


class _GatesAsInputs:
    """Replaces each squeeze-excitation block's computed gates by a value set before the forward pass."""

    @staticmethod
    def install(blocks: list) -> None:
        import types

        def forward(self, inputs, drop_connect_rate=None):  # smp's MBConvBlock.forward, gate from outside
            x = inputs
            if self._has_expansion:
                x = self._swish(self._bn0(self._expand_conv(inputs)))
            x = self._swish(self._bn1(self._depthwise_conv(x)))
            x = x * self._gate_input
            x = self._bn2(self._project_conv(x))
            if self._has_drop_connect:
                x = x + inputs
            return x

        for block in blocks:
            block.forward = types.MethodType(forward, block)


def _export_modules(net: torch.nn.Module):
    """(gates, gated) wrappers of a copy of eval-mode `net` for tracing."""
    import copy

    import torch

    from nucseg.models.squeeze_excitation import _pool_squeeze, se_blocks

    class Gates(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.encoder = inner.encoder
            self.blocks = se_blocks(inner)
            for block in self.blocks:
                block._se_reduce.register_forward_pre_hook(_pool_squeeze)

        def forward(self, x):
            gates: list = []
            handles = [b._se_expand.register_forward_hook(lambda _m, _i, out: gates.append(torch.sigmoid(out)))
                       for b in self.blocks]
            try:
                self.encoder(x)
            finally:
                for h in handles:
                    h.remove()
            return tuple(gates)

    class Gated(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.blocks = se_blocks(inner)
            _GatesAsInputs.install(self.blocks)

        def forward(self, x, *gates):
            for block, gate in zip(self.blocks, gates, strict=True):
                block._gate_input = gate
            return self.inner(x)

    plain = copy.deepcopy(net).to(memory_format=torch.contiguous_format).eval()
    return Gates(copy.deepcopy(plain)), Gated(copy.deepcopy(plain))


def export_network(net: torch.nn.Module, folder: Path) -> None:
    """Write ``gates.onnx`` and ``gated.onnx`` (or only ``plain.onnx`` for a network without gates) and
    ``export.json`` into `folder`, atomically (a new folder renamed into place)."""
    import torch

    from nucseg.models.squeeze_excitation import se_blocks

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        x = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE)
        spatial = {0: "batch", 2: "height", 3: "width"}
        blocks = se_blocks(net)
        channels = [int(b._se_expand.out_channels) for b in blocks]
        gate_names = [f"gate{i}" for i in range(len(blocks))]
        with warnings_quiet():
            if blocks:
                gates_module, gated = _export_modules(net)
                torch.onnx.export(gates_module, (torch.zeros(2, 3, _PROBE_SIZE, _PROBE_SIZE),),
                                  str(tmp / "gates.onnx"), input_names=["image"], output_names=gate_names,
                                  opset_version=OPSET, dynamo=False, dynamic_axes={"image": spatial})
                gates = tuple(torch.full((1, c, 1, 1), 0.5) for c in channels)
                torch.onnx.export(gated, (x, *gates), str(tmp / "gated.onnx"), input_names=["image", *gate_names],
                                  output_names=["logits"], opset_version=OPSET, dynamo=False,
                                  dynamic_axes={"image": spatial, "logits": spatial})
            else:
                import copy

                plain = copy.deepcopy(net).to(memory_format=torch.contiguous_format).eval()
                torch.onnx.export(plain, (x,), str(tmp / "plain.onnx"), input_names=["image"],
                                  output_names=["logits"], opset_version=OPSET, dynamo=False,
                                  dynamic_axes={"image": spatial, "logits": spatial})
        (tmp / "export.json").write_text(json.dumps({"gate_channels": channels, **_versions()}, indent=2))
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)  # an incomplete or stale export of the same key
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def warnings_quiet():
    """The TorchScript exporter warns about every traced Python branch of smp; none changes the graph here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- running --------------------------------------------------------------------------------------------------


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _as_input(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x, dtype=np.float32)
    return np.ascontiguousarray(x.detach().float().cpu().numpy())


class OnnxNetwork:
    """A network served by ONNX Runtime, called like the PyTorch module it was exported from.

    ``net(x)`` takes a normalised (B, 3, H, W) float32 array and returns its logits as an array, without torch
    (a torch tensor gives a tensor); sides that are not a multiple of the encoder's stride (32), which the
    exported graph cannot take, run in PyTorch (built on first need).
    Attributes:
        runtime: "onnxruntime <version>" (copied into ``<stem>_predict.json``).
        gate_channels: channels of each squeeze-excitation gate ([] for a network without gates).
    """

    stride = 32

    def __init__(self, folder: Path, torch_network: Callable[[], torch.nn.Module], threads: int | None = None,
                 gates: list[np.ndarray] | None = None, sessions: dict[str, Any] | None = None):
        import onnxruntime

        meta = json.loads((folder / "export.json").read_text())
        self.folder = folder
        self.gate_channels: list[int] = list(meta["gate_channels"])
        self.runtime = f"onnxruntime {onnxruntime.__version__}"
        self.threads = threads  # None: decided when a session is made (see `session_threads`)
        self._torch_network = torch_network
        self._gates = gates
        self._sessions = sessions if sessions is not None else {}

    def _get_session(self, name: str):
        if name not in self._sessions:
            self._sessions[name] = _session(self.folder / f"{name}.onnx", self.threads or session_threads())
        return self._sessions[name]

    @property
    def gated(self) -> bool:
        """True for a copy whose gates were fixed with `with_gates` (or a network without gates)."""
        return self._gates is not None or not self.gate_channels

    def torch_network(self) -> torch.nn.Module:
        """The PyTorch network this was exported from, with the same gates (built on first call)."""
        net = self._torch_network()
        if self._gates is not None:
            import copy

            import torch

            from nucseg.models.squeeze_excitation import freeze_gates

            net = copy.deepcopy(net)
            freeze_gates(net, [torch.from_numpy(g).flatten() for g in self._gates])
        return net

    def _run(self, x: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        feeds = {"image": _as_input(x)}
        if not self.gate_channels:
            return self._get_session("plain").run(None, feeds)
        if self._gates is None:  # the network as trained: each image's gates from itself
            outs = [self.with_gates(self.pooled_gates(x[i : i + 1]))._run(x[i : i + 1])[0] for i in range(len(x))]
            return [np.concatenate(outs)]
        feeds.update({f"gate{i}": g for i, g in enumerate(self._gates)})
        return self._get_session("gated").run(None, feeds)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        if x.shape[-1] % self.stride or x.shape[-2] % self.stride:
            import torch

            with torch.inference_mode():
                if isinstance(x, np.ndarray):
                    return self.torch_network()(torch.from_numpy(_as_input(x))).numpy()
                return self.torch_network()(x)
        logits = self._run(x)[0]
        if isinstance(x, np.ndarray):
            return logits
        import torch

        return torch.from_numpy(logits)

    def pooled_gates(self, windows: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        """Each block's (1, C, 1, 1) gates of `windows` (a normalised (N, 3, S, S) batch) seen as one image (see
        `nucseg.models.squeeze_excitation.pooled_gates`)."""
        if not self.gate_channels:
            return []
        if windows.shape[-1] % self.stride or windows.shape[-2] % self.stride:
            raise ValueError(f"a gate window's sides must be multiples of {self.stride}")
        outputs = self._get_session("gates").run(None, {"image": _as_input(windows)})
        return [np.ascontiguousarray(g.reshape(1, -1, 1, 1), dtype=np.float32) for g in outputs]

    def with_gates(self, gates: list[np.ndarray]) -> OnnxNetwork:
        """A copy whose gates are `gates` (one vector per block), sharing this network's sessions."""
        if self.gated:
            raise ValueError("this network's gates are already fixed")
        gates = [np.ascontiguousarray(np.asarray(g, np.float32).reshape(1, -1, 1, 1)) for g in gates]
        return OnnxNetwork(self.folder, self._torch_network, self.threads, gates, self._sessions)

    def __getstate__(self) -> dict:
        """Picklable for worker processes: sessions are made again there, on first use."""
        return {**self.__dict__, "_sessions": {}}

    # what callers of a torch module in eval mode use
    def eval(self) -> OnnxNetwork:
        return self

    def to(self, *args, **kwargs) -> OnnxNetwork:
        return self


def load_onnx_network(spec: ModelSpec, torch_network: Callable[[], torch.nn.Module],
                      threads: int | None = None) -> OnnxNetwork:
    """The model of `spec` in ONNX Runtime, exported on first use (from `torch_network()`) and cached.

    Raises:
        RuntimeUnavailable: ONNX Runtime is missing, or the export failed or does not reproduce PyTorch.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise RuntimeUnavailable("onnxruntime is not installed") from err
    if not spec.trained or spec.weights_path is None:
        raise RuntimeUnavailable("an untrained model has no weights to export")
    sha = sha256_of(spec.weights_path)
    if spec.sha256 and sha != spec.sha256:
        from nucseg.errors import ModelError

        raise ModelError(f"{spec.weights_path} does not match the sha256 in its config: the file is corrupt or "
                         "was replaced")
    folder = export_folder(spec, sha)
    if not (folder / "export.json").is_file():
        net = torch_network()
        try:
            export_network(net, folder)
            network = OnnxNetwork(folder, torch_network, threads)
            check_export(network, net)
        except RuntimeUnavailable:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        except Exception as err:  # the exporter and ORT raise many kinds; any of them means "use PyTorch"
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeUnavailable(f"export failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}") from err
        return network
    try:
        return OnnxNetwork(folder, torch_network, threads)
    except Exception as err:
        raise RuntimeUnavailable(f"cached export {folder} unreadable: {err}") from err


def check_export(network: OnnxNetwork, net: torch.nn.Module) -> None:
    """Refuse an export whose gates or logits differ from PyTorch's on a random probe."""
    import torch

    from nucseg.models.squeeze_excitation import pooled_gates, se_blocks, with_gates

    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(1, 3, 2 * _PROBE_SIZE, 2 * _PROBE_SIZE, generator=generator)
    windows = torch.rand(3, 3, _PROBE_SIZE, _PROBE_SIZE, generator=generator)
    if not se_blocks(net):
        with torch.inference_mode():
            expected = net(probe)
        diffs = [float((expected - network(probe)).abs().max())]
    else:
        with torch.inference_mode():
            gates = pooled_gates(net, windows)
            expected = with_gates(net, gates)(probe)
        ort_gates = network.pooled_gates(windows)
        diffs = [max(float((g - torch.from_numpy(o).flatten()).abs().max()) for g, o in zip(gates, ort_gates))]
        diffs.append(float((expected - network.with_gates(ort_gates)(probe)).abs().max()))
    if not all(d <= EXPORT_TOLERANCE for d in diffs):
        raise RuntimeUnavailable(f"exported gates or logits differ from PyTorch's by {max(diffs):.2g}")
