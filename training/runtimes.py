"""Forward passes for serving: the learner's own PyTorch model, or the same weights exported to ONNX Runtime."""
from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnx", "torch")
# Softmax outputs of the two runtimes on the same input may differ by float rounding only.
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


def onnx_forward(model: torch.nn.Module, size: int, threads: int | None = None) -> Forward:
    """Logits from ONNX Runtime, exported in memory from `model` (the .pkl stays the only file)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailable("onnxruntime is not installed") from exc
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns about its own deprecation
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, size, size),), buffer, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def forward(batch: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(None, {"images": batch.numpy()})
        return torch.from_numpy(logits)

    return forward


def agreement(reference: Forward, candidate: Forward, size: int, seed: int = 0) -> float:
    """Largest softmax difference between two forwards on a fixed random batch."""
    batch = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))
    expected = torch.softmax(reference(batch), dim=1).numpy()
    actual = torch.softmax(candidate(batch), dim=1).numpy()
    return float(np.abs(expected - actual).max())


def make_forward(model: torch.nn.Module, size: int, runtime: str = "auto") -> tuple[str, Forward]:
    """The fastest forward that agrees with PyTorch: ONNX Runtime when it can, else PyTorch; returns (name, fn)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    reference = torch_forward(model)
    if runtime == "torch":
        return "torch", reference
    try:
        candidate = onnx_forward(model, size)
        difference = agreement(reference, candidate, size)
    except Exception as exc:  # an exporter or runtime failure must not stop serving when PyTorch works
        reason = (str(exc).splitlines() or [exc.__class__.__name__])[0][:300]  # exporters append whole graphs
        if runtime == "onnx":
            raise RuntimeUnavailable(f"ONNX Runtime cannot run this model: {reason}") from exc
        log.warning("serving with PyTorch: the ONNX export failed (%s: %s)", exc.__class__.__name__, reason)
        return "torch", reference
    if difference > MAX_PROBABILITY_DIFFERENCE:
        message = f"ONNX Runtime disagrees with PyTorch by {difference:.2g} in probability"
        if runtime == "onnx":
            raise RuntimeUnavailable(message)
        log.warning("serving with PyTorch: %s", message)
        return "torch", reference
    return "onnx", candidate
