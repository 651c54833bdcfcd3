"""Forward passes for serving: the learner's PyTorch model, or the same weights exported to OpenVINO or ONNX Runtime."""
from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "openvino", "onnx", "torch")
# Fastest first, as measured on this project's CPU (bench/RESULTS.md); `auto` takes the first that works and agrees.
FAST_RUNTIMES = ("openvino", "onnx")
# A fast runtime's softmax may differ from PyTorch's on the same input by float rounding only.
MAX_PROBABILITY_DIFFERENCE = 1e-3

Forward = Callable[[torch.Tensor], torch.Tensor]


class RuntimeUnavailable(RuntimeError):
    """The asked-for runtime cannot run this model here."""


def torch_forward(model: torch.nn.Module) -> Forward:
    """Logits from the PyTorch model in eval mode, without autograd bookkeeping."""
    model.eval()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(batch).float()

    return forward


def onnx_bytes(model: torch.nn.Module, size: int) -> bytes:
    """The model as an ONNX graph with a free batch dimension, exported in memory."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns about its own deprecation
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, size, size),), buffer, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    return buffer.getvalue()


def onnx_forward(graph: bytes, threads: int) -> Forward:
    """Logits from ONNX Runtime's CPU provider (its `run` is thread-safe)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailable("onnxruntime is not installed") from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def forward(batch: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(None, {"images": batch.numpy()})
        return torch.from_numpy(logits)

    return forward


def openvino_forward(graph: bytes, threads: int) -> Forward:
    """Logits from OpenVINO's CPU plugin in fp32 (its default on bf16-capable CPUs would change the numbers)."""
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeUnavailable("openvino is not installed") from exc
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(graph), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False})
    local = threading.local()  # an infer request must not be shared between threads

    def forward(batch: torch.Tensor) -> torch.Tensor:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        request.infer({0: batch.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return forward


def agreement(reference: Forward, candidate: Forward, size: int, seed: int = 0) -> float:
    """Largest softmax difference between two forwards on a fixed random batch."""
    batch = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))
    expected = torch.softmax(reference(batch), dim=1).numpy()
    actual = torch.softmax(candidate(batch), dim=1).numpy()
    return float(np.abs(expected - actual).max())


BUILDERS = {"openvino": openvino_forward, "onnx": onnx_forward}


def make_forward(model: torch.nn.Module, size: int, runtime: str = "auto") -> tuple[str, Forward]:
    """The fastest forward that agrees with PyTorch (OpenVINO, else ONNX Runtime, else PyTorch); returns (name, fn)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    reference = torch_forward(model)
    if runtime == "torch":
        return "torch", reference
    try:
        graph = onnx_bytes(model, size)
    except Exception as exc:  # an exporter failure must not stop serving when PyTorch works
        reason = (str(exc).splitlines() or [exc.__class__.__name__])[0][:300]  # exporters append whole graphs
        if runtime != "auto":
            raise RuntimeUnavailable(f"{runtime} cannot run this model, the ONNX export failed: {reason}") from exc
        log.warning("serving with PyTorch: the ONNX export failed (%s: %s)", exc.__class__.__name__, reason)
        return "torch", reference
    for name in FAST_RUNTIMES if runtime == "auto" else (runtime,):
        try:
            candidate = BUILDERS[name](graph, torch.get_num_threads())
            difference = agreement(reference, candidate, size)
        except Exception as exc:  # a runtime that is missing or cannot compile the graph
            if runtime != "auto":
                raise RuntimeUnavailable(f"{name} cannot run this model: {exc}") from exc
            log.warning("not serving with %s: %s: %s", name, exc.__class__.__name__, exc)
            continue
        if difference <= MAX_PROBABILITY_DIFFERENCE:
            return name, candidate
        message = f"{name} disagrees with PyTorch by {difference:.2g} in probability"
        if runtime != "auto":
            raise RuntimeUnavailable(message)
        log.warning("not serving with %s: %s", name, message)
    log.warning("serving with PyTorch: no faster runtime is available")
    return "torch", reference
