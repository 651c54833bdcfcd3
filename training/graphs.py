"""The served model as an ONNX graph: exported in memory, once per model and code version, then read from a cache."""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .fsutil import atomic_path, default_cache_dir, exclusive

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


def _cached_graph(folder: Path, key: str) -> bytes | None:
    """The cached graph for `key`, or None; named by the graph's own digest too, so a damaged file is not used."""
    for path in folder.glob(f"{key}-*.onnx"):
        with contextlib.suppress(OSError):
            graph = path.read_bytes()
            if path.stem == f"{key}-{hashlib.sha256(graph).hexdigest()}":
                return graph
    return None


def cached_onnx_bytes(model: torch.nn.Module, size: int, export_elsewhere: Callable[[], None] | None = None) -> bytes:
    """`onnx_bytes(model, size)`, from the cache when this exact model was exported before (a worker start, a test).

    `export_elsewhere`: fills the cache in another process (see `export_in_child`); here only if that fails.
    """
    key = graph_key(model, size)
    folder = graph_cache_dir()
    graph = _cached_graph(folder, key)
    if graph is not None:
        return graph
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = exclusive(folder / ".export.lock")  # one export at a time: the next worker then finds it cached
    except OSError:
        lock = contextlib.nullcontext()
    with lock:
        graph = _cached_graph(folder, key)
        if graph is None and export_elsewhere is not None:
            try:
                export_elsewhere()
            except Exception as exc:  # a child that fails costs the export here, never the model
                log.warning("exporting the graph in this process: the child export failed (%s)", exc)
            graph = _cached_graph(folder, key)
        return _export_into(folder, key, model, size) if graph is None else graph


def _export_into(folder: Path, key: str, model: torch.nn.Module, size: int) -> bytes:
    """Export the graph and cache it under `key` (the caller holds the export lock)."""
    graph = onnx_bytes(model, size)
    try:
        for stale in folder.glob(f"{key}-*.onnx"):
            stale.unlink(missing_ok=True)
        with atomic_path(folder / f"{key}-{hashlib.sha256(graph).hexdigest()}.onnx") as tmp:
            tmp.write_bytes(graph)
    except OSError as exc:  # a read-only home must not stop serving; it only costs the export next time
        log.warning("cannot cache the exported graph in %s: %s", folder, exc.strerror)
    return graph


# A child that takes longer has hung: the export then runs in the worker, as it did before children.
CHILD_EXPORT_TIMEOUT = 300
CHILD_NICE = 10  # as the reload thread's: below the requests, not starved behind them


def export_in_child(path: str | Path, timeout: float = CHILD_EXPORT_TIMEOUT) -> None:
    """Export the graph of the model at `path` into the cache in a child process, at low priority.

    The TorchScript exporter holds the GIL for up to half a second at a time, and a server's requests must not
    wait behind it (docs/experiments.md); raises RuntimeError or TimeoutExpired when the child fails.
    """
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-m", "training.graphs", str(path)], env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(last[:300])


def main(argv: list[str] | None = None) -> None:
    """`python -m training.graphs PATH`: put the served graph of the model at PATH into the cache (for `export_in_child`)."""
    from .inference import Predictor

    os.nice(max(0, CHILD_NICE - os.nice(0)))  # a reload thread's child inherits its nice value: not twice
    predictor = Predictor.load((argv or sys.argv[1:])[0], runtime="torch")
    model, size = predictor.served, predictor.size
    _export_into(graph_cache_dir(), graph_key(model, size), model, size)  # the parent holds the export lock


if __name__ == "__main__":
    main()
