"""Neural features: a truncated CNN run by ONNX Runtime, pooled on a g x g grid.

- ``efficientnet``: EfficientNet-Lite0 up to its 112-channel stage (dim 112*g*g).
- ``mobilenet``: MobileNetV3-Small up to its 48-channel stage (dim 48*g*g).

The net is fully convolutional, so the prepared image is fed at its own size (256x144
for 16:9 at the default comparison size); the stage output is [N, C, ceil(H/16), ceil(W/16)].
Each grid cell (rows and columns split by ``np.array_split``) is pooled by avg or by
a sign-preserving GeM, ``m = mean(sign(x)|x|^p)``, ``sign(m)|m|^(1/p)``: the stage is a
linear bottleneck, so half its values are negative. The usual GeM clamps them to 1e-6,
which throws that half away and makes p=1 differ from avg; the signed form equals avg
exactly at p=1 and retrieved flipped copies better (tests/test_neural.py, 24-photo pool:
recall@1 on flips 0.96 vs 0.88 clamped, grid 3). Cells are concatenated and the vector
L2-normalised (one block, "neural").

ONNX model contract (also for a file given with ``--onnx-model``): one input, float32
[N, 3, H, W] with dynamic N, H and W, RGB scaled as ``(x - MEAN) / STD`` on 0..255
values (per method, see ``NETS``); one output, float32 [N, C, h, w].

Threads: one InferenceSession per process and model (cached here, so building the
extractor per chunk is cheap). Its intra-op threads are, in order of precedence:
``configure_runtime(threads=N)``, then the environment variable FLUXFRAME_ORT_THREADS,
then ``max(1, cpus // jobs)`` with ``jobs`` from ``configure_runtime(jobs=J)`` (default 1).
A parallel build calls ``configure_runtime(jobs=J)`` in each worker, or sets
FLUXFRAME_ORT_THREADS before its workers start, so jobs x threads fits the cores.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared import models
from shared.atomic import atomic_write_bytes
from shared.errors import BundleError, InputError, ModelMissingError, UsageError
from shared.features.base import Block, Image, MethodInfo, Vectors, finish_blocks
from shared.hashing import sha256_file
from shared.spec import FeatureSpec

MODEL_FILE = "model.onnx"
ENV_THREADS = "FLUXFRAME_ORT_THREADS"
# Images per ONNX Runtime call: large enough to amortise the call, small enough to stay in cache.
BATCH_SIZE = 16
# Output stride of both truncated nets: the feature map is ceil(H/16) x ceil(W/16).
STRIDE = 16


@dataclass(frozen=True)
class NetConfig:
    channels: int
    mean: tuple[float, float, float]  # RGB, on 0..255 values
    std: tuple[float, float, float]
    summary: str


NETS: dict[str, NetConfig] = {
    # EfficientNet-Lite was trained in TensorFlow with inputs scaled as (x - 127) / 128.
    "efficientnet": NetConfig(
        112, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0), "EfficientNet-Lite0 112-channel stage, grid-pooled (neural)"
    ),
    # torchvision's ImageNet normalisation.
    "mobilenet": NetConfig(
        48,
        (123.675, 116.28, 103.53),
        (58.395, 57.12, 57.375),
        "MobileNetV3-Small 48-channel stage, grid-pooled (neural, fast)",
    ),
}

_jobs = 1
_threads: int | None = None
_SESSIONS: dict[tuple[str, int], Any] = {}


def configure_runtime(*, jobs: int = 1, threads: int | None = None) -> None:
    """Set how many processes share the cores (``jobs``) or the exact thread count, for this process."""
    global _jobs, _threads
    if jobs < 1 or (threads is not None and threads < 1):
        raise UsageError(f"jobs and threads must be >= 1, got jobs={jobs} threads={threads}")
    _jobs = jobs
    _threads = threads


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def ort_threads() -> int:
    """Intra-op threads a new session gets in this process (see the module docstring)."""
    if _threads is not None:
        return _threads
    env = os.environ.get(ENV_THREADS, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise UsageError(f"{ENV_THREADS} must be a whole number >= 1, got {env!r}")
        return int(env)
    return max(1, available_cpus() // _jobs)


def feature_map_size(width: int, height: int) -> tuple[int, int]:
    """(w, h) of the stage output for an input of this size."""
    return -(-width // STRIDE), -(-height // STRIDE)


def pool_grid(fmap: NDArray[np.float32], grid: int, pooling: str, gem_p: float) -> NDArray[np.float32]:
    """[N, C, h, w] feature maps -> [N, grid*grid*C], cells in row-major order, each C wide."""
    _, _, h, w = fmap.shape
    if h < grid or w < grid:
        raise ValueError(f"a {w}x{h} feature map cannot be split into a {grid}x{grid} grid")
    # float64: |x|^p for p up to 16 would overflow float32 on strong activations.
    x = fmap.astype(np.float64)
    if pooling == "gem":
        x = np.sign(x) * np.power(np.abs(x), gem_p)
    cells: list[NDArray[np.float64]] = []
    for rows in np.array_split(np.arange(h), grid):
        for cols in np.array_split(np.arange(w), grid):
            cells.append(x[:, :, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].mean(axis=(2, 3)))
    pooled = np.concatenate(cells, axis=1)
    if pooling == "gem":
        pooled = np.sign(pooled) * np.power(np.abs(pooled), 1.0 / gem_p)
    return pooled.astype(np.float32)


class NeuralExtractor:
    """Prepared BGR uint8 images -> grid-pooled, L2-normalised stage features."""

    def __init__(self, spec: FeatureSpec, session: Any, *, batch_size: int = BATCH_SIZE) -> None:
        self.spec = spec
        self.net = NETS[spec.method]
        self.blocks = (Block("neural", _dim(spec)),)
        self.batch_size = batch_size
        self._session = session
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name
        self._mean = np.array(self.net.mean, dtype=np.float32)
        self._inv_std = (1.0 / np.array(self.net.std, dtype=np.float64)).astype(np.float32)

    def extract(self, images: Sequence[Image]) -> Vectors:
        if len(images) == 0:
            return np.zeros((0, self.blocks[0].dim), dtype=np.float32)
        pooled = [
            pool_grid(
                self.feature_maps(images[i : i + self.batch_size]),
                self.spec.spatial_grid,
                self.spec.pooling,
                self.spec.gem_p,
            )
            for i in range(0, len(images), self.batch_size)
        ]
        return finish_blocks([np.concatenate(pooled, axis=0)])

    def feature_maps(self, images: Sequence[Image]) -> NDArray[np.float32]:
        """The raw stage output [N, C, h, w] for one batch (before pooling)."""
        out = self._session.run([self._output], {self._input: self.net_input(images)})[0]
        return np.asarray(out, dtype=np.float32)

    def net_input(self, images: Sequence[Image]) -> NDArray[np.float32]:
        """The ONNX input for a batch: RGB, normalised for the net, NCHW float32."""
        w, h = self.spec.prepared_size()
        for im in images:
            if im.shape != (h, w, 3) or im.dtype != np.uint8:
                raise ValueError(f"extractor expects {w}x{h} BGR uint8 images, got {im.shape} {im.dtype}")
        rgb = np.stack(images)[..., ::-1].astype(np.float32)
        rgb -= self._mean
        rgb *= self._inv_std
        return np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))


def _ort() -> Any:
    # Imported on first use so that classic methods never pay for loading ONNX Runtime.
    import onnxruntime

    return onnxruntime


def _session(data: bytes, sha256: str, threads: int) -> Any:
    key = (sha256, threads)
    cached = _SESSIONS.get(key)
    if cached is not None:
        return cached
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads == 1 or _jobs > 1:
        # Spinning idle threads steal the cores other worker processes need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    _SESSIONS[key] = session
    return session


def _dim(spec: FeatureSpec) -> int:
    return NETS[spec.method].channels * spec.spatial_grid * spec.spatial_grid


def _check_grid_fits(spec: FeatureSpec) -> None:
    w, h = spec.prepared_size()
    fw, fh = feature_map_size(w, h)
    if min(fw, fh) < spec.spatial_grid:
        need = STRIDE * (spec.spatial_grid - 1) + 1
        raise UsageError(
            f"a {spec.spatial_grid}x{spec.spatial_grid} neural grid needs prepared images of at least {need} px"
            f" on each side, got {w}x{h}; raise --comparison-size or use --spatial-grid 2"
        )


def _factory(spec: FeatureSpec, asset_dir: Path) -> NeuralExtractor:
    _check_grid_fits(spec)
    path = asset_dir / MODEL_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path} is missing: the bundle carries its {spec.method} model there") from None
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror or e}") from None
    sha = models.sha256_bytes(data)
    if sha != spec.model_sha256:
        raise BundleError(
            f"{path} has sha256 {sha[:12]}, the feature spec expects {spec.model_sha256[:12] or 'none'}:"
            " the model was changed; restore it or rebuild the bundle"
        )
    return NeuralExtractor(spec, _session(data, sha, ort_threads()))


def _prepare_assets(spec: FeatureSpec, dest: Path, model_file: Path | None = None) -> list[str]:
    """Copy the spec's model into ``dest``: ``model_file`` (what resolve_model returned), else the cached one."""
    if not spec.model_sha256:
        raise UsageError(f"the {spec.method} spec names no model; resolve_model() fills its model_sha256")
    cache = models.cache_dir()
    data = _read_if_sha(model_file, spec.model_sha256)
    if data is None:
        data = _read_if_sha(cache / models.model_filename(spec.method, spec.model_sha256), spec.model_sha256)
    if data is None:
        raise ModelMissingError(
            f"no {spec.method} model with sha256 {spec.model_sha256[:12]} in {cache};"
            f" run: {models.export_command(spec.method)}"
        )
    target = dest / MODEL_FILE
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    if sha256_file(target) != spec.model_sha256:
        raise BundleError(f"{target} does not read back as written; check the disk")
    return [MODEL_FILE]


def _read_if_sha(path: Path | None, sha256: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if models.sha256_bytes(data) == sha256 else None


def _readiness(method: str) -> tuple[bool, str]:
    if models.cached_models(method, models.cache_dir()):
        return True, ""
    return False, models.export_command(method)


def resolve_model(method: str, onnx_model: Path | None = None, cache_dir: Path | None = None) -> tuple[Path, str]:
    """The model a build uses and its sha256 (for ``FeatureSpec.model_sha256``).

    An explicit ``onnx_model`` wins: it is checked (it must follow the model contract
    and give the method's channel count) and copied into the cache under its content
    name, so that every later step finds it by sha256 alone. Otherwise the most recently
    exported model of the method in the cache is used. A build hands the returned path to
    ``prepare_assets`` (its ``model_file``), which then finds it outside the default cache too.
    """
    if method not in NETS:
        raise UsageError(f"{method!r} is not a neural method; choose one of {', '.join(NETS)}")
    cache = models.cache_dir(cache_dir)
    return _import_model(method, Path(onnx_model), cache) if onnx_model is not None else _latest(method, cache)


def _latest(method: str, cache: Path) -> tuple[Path, str]:
    cached = models.cached_models(method, cache)
    if not cached:
        raise ModelMissingError(f"no exported {method} model in {cache}; run: {models.export_command(method)}")
    path = cached[0]
    sha = sha256_file(path)
    if path.name != models.model_filename(method, sha):
        raise ModelMissingError(
            f"cached model {path} is damaged (content does not match its name); run: {models.export_command(method)}"
        )
    return path, sha


def _import_model(method: str, src: Path, cache: Path) -> tuple[Path, str]:
    try:
        data = src.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read ONNX model {src}: {e.strerror or e}") from None
    sha = models.sha256_bytes(data)
    existing = models.find_model(method, sha, cache)
    if existing is not None:
        return existing, sha
    _check_contract(method, data, src)
    path = models.store_model(method, data, cache, {"source": str(src.resolve()), "source_kind": "onnx"})
    return path, sha


def _check_contract(method: str, data: bytes, src: Path) -> None:
    ort = _ort()
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime raises its own exception types for every kind of bad file
        raise InputError(f"{src} is not a usable ONNX model: {_first_line(e)}") from None
    if len(session.get_inputs()) != 1:
        raise InputError(f"{src} must have exactly one input (float32 [N, 3, H, W]), has {len(session.get_inputs())}")
    probe = np.zeros((2, 3, 80, 112), dtype=np.float32)
    try:
        out = session.run(None, {session.get_inputs()[0].name: probe})[0]
    except Exception as e:  # a fixed input size or type shows up only when the model runs
        raise InputError(
            f"{src} does not run on a float32 [2, 3, 80, 112] input (dynamic batch, height and width needed):"
            f" {_first_line(e)}"
        ) from None
    want = NETS[method].channels
    if np.ndim(out) != 4 or out.shape[0] != 2 or out.shape[1] != want:
        raise InputError(f"{src} gives output shape {tuple(np.shape(out))}; {method} needs [N, {want}, h, w]")


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


# The neural methods, listed by shared.features.registry (nothing registers itself at import).
METHODS: tuple[MethodInfo, ...] = tuple(
    MethodInfo(
        name=name,
        summary=net.summary,
        neural=True,
        factory=_factory,
        prepare_assets=_prepare_assets,
        readiness=functools.partial(_readiness, name),
        dim=_dim,
    )
    for name, net in NETS.items()
)
