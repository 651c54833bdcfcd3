"""The served model as an ONNX graph: exported in memory, once per model and code version, then read from a cache."""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from pathlib import Path

import torch

from .fsutil import atomic_path, default_cache_dir

log = logging.getLogger(__name__)

# The code that decides what the exported graph computes, besides the weights and the installed libraries.
_GRAPH_SOURCES = ("openset.py", "graphs.py")


def onnx_bytes(model: torch.nn.Module, size: int) -> bytes:
    """The model as an ONNX graph with a free batch dimension, exported in memory."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns about its own deprecation
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, size, size),), buffer, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    return buffer.getvalue()


def graph_key(model: torch.nn.Module, size: int) -> str:
    """A digest of everything the export depends on: weights, module tree, input size, library and source versions."""
    import fastai
    import timm

    digest = hashlib.sha256(f"{size}|{torch.__version__}|{timm.__version__}|{fastai.__version__}|{model}".encode())
    here = Path(__file__).parent
    for name in _GRAPH_SOURCES:
        digest.update((here / name).read_bytes())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def graph_cache_dir() -> Path:
    """Where exported graphs and OpenVINO's compiled blobs are kept."""
    return default_cache_dir() / "graphs"


def cached_onnx_bytes(model: torch.nn.Module, size: int) -> bytes:
    """`onnx_bytes(model, size)`, from the cache when this exact model was exported before (a worker start, a test)."""
    key = graph_key(model, size)
    folder = graph_cache_dir()
    for path in folder.glob(f"{key}-*.onnx"):  # named by the graph's own digest too, so a damaged file is not used
        with contextlib.suppress(OSError):
            graph = path.read_bytes()
            if path.stem == f"{key}-{hashlib.sha256(graph).hexdigest()}":
                return graph
    graph = onnx_bytes(model, size)
    try:
        for stale in folder.glob(f"{key}-*.onnx"):
            stale.unlink(missing_ok=True)
        with atomic_path(folder / f"{key}-{hashlib.sha256(graph).hexdigest()}.onnx") as tmp:
            tmp.write_bytes(graph)
    except OSError as exc:  # a read-only home must not stop serving; it only costs the export next time
        log.warning("cannot cache the exported graph in %s: %s", folder, exc.strerror)
    return graph
