"""Forward passes for serving: the learner's PyTorch model, or the same weights exported to OpenVINO or ONNX Runtime."""
from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from .devices import cpu_has_native_bf16
from .fsutil import exclusive
from .graphs import cached_onnx_bytes, graph_cache_dir

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "openvino-bf16", "openvino", "onnx", "torch")
# Fastest first, as measured on this project's CPU (bench/RESULTS.md); `auto` takes the first that works and agrees.
FAST_RUNTIMES = ("openvino-bf16", "openvino", "onnx")
# fp32 only: the numbers the served fp32 recomputes give
EXACT_RUNTIMES = tuple(name for name in FAST_RUNTIMES if not name.endswith("bf16"))
# An fp32 runtime's softmax may differ from PyTorch's on the same input by float rounding only.
MAX_PROBABILITY_DIFFERENCE = 1e-3
# A bf16 answer is kept only when its top probability is at least this, i.e. every other logit is 4.6 or more below
# the top one: twice the largest shift bf16 caused between two logits on real photos (docs/experiments.md, "bf16
# serving"), so fp32 would give the same top-1 and "not sure" flag. Anything less confident is recomputed in fp32.
BF16_CONFIDENT = 0.99
# What bf16 may still move a shown probability by on a confident prediction (bounded by the margin above).
BF16_MAX_PROBABILITY_DIFFERENCE = 0.1
# A confident bf16 answer is still recomputed when its scope score is this close to the detector's threshold; bf16
# moved a kept photo's score further than this once in about 2,300 (docs/experiments.md, "bf16 serving").
BF16_SCOPE_MARGIN = 1.0
BF16_READING_MARGIN = 0.05  # of the ImageNet check's probability: fp32 decides a reading this near its line

Forward = Callable[[torch.Tensor], torch.Tensor]
CloseCall = Callable[[torch.Tensor], torch.Tensor]  # a forward's output -> which rows bf16 may have decided wrongly


class RuntimeUnavailable(RuntimeError):
    """The asked-for runtime cannot run this model here."""


def torch_forward(model: torch.nn.Module) -> Forward:
    """Logits from the PyTorch model in eval mode, without autograd bookkeeping."""
    model.eval()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(batch).float()

    return forward


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


def _openvino_core():
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeUnavailable("openvino is not installed") from exc
    return openvino.Core()


def _compile(core, model, config: dict):
    """Compile for the CPU through OpenVINO's model cache (the next worker or reload skips most of the work)."""
    folder = graph_cache_dir() / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # One compile at a time per cache: a worker must never read a blob another worker is still writing.
        with exclusive(folder / ".lock"):
            return core.compile_model(model, "CPU", {**config, "CACHE_DIR": str(folder)})
    except (OSError, RuntimeError) as exc:  # a read-only or full cache costs a full compile, never the runtime
        log.warning("compiling without OpenVINO's cache (%s): %s", folder, exc)
        return core.compile_model(model, "CPU", config)


def _compiled_forward(core, model, threads: int, precision: str) -> Forward:
    """One OpenVINO model compiled for the CPU in `precision`, as a thread-safe forward."""
    compiled = _compile(core, model, {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False})
    local = threading.local()  # an infer request must not be shared between threads

    def forward(batch: torch.Tensor) -> torch.Tensor:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        request.infer({0: batch.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return forward


def openvino_forward(graph: bytes, threads: int, precision: str = "f32") -> Forward:
    """Logits from OpenVINO's CPU plugin in `precision` (f32 unless asked: its default on bf16 CPUs is bf16)."""
    core = _openvino_core()
    return _compiled_forward(core, core.read_model(graph), threads, precision)


# How fast the guard's running share of rows handed to fp32 follows the traffic.
RECENT_WEIGHT = 0.2
# Seconds a row, per pass: the median of the last few calls (a first call also pays the runtime's lazy set-up).
TIMINGS_KEPT, TIMINGS_NEEDED = 9, 3
# While exact-first, one call in this many still goes fast-first, so the fast pass's timing stays current.
FAST_PROBE_EVERY = 16
# Exact-first only when it saves at least this share: near the break-even (a blend of easy and hard photos) both
# cost the same on average, but fast-first answers the easy majority sooner.
EXACT_FIRST_SAVING = 0.25


class GuardedForward:
    """`fast` first and `exact` for the rows it can't be trusted on; `exact` straight away while most recent rows
    needed it anyway (a hard or out-of-scope photo would otherwise pay both passes).

    The first `n_classes` columns are the logits (all of them when None); any others (features) ride along.
    `close_call` marks further rows to recompute: those where `fast`'s error could change another decision.
    """

    def __init__(self, fast: Forward, exact: Forward, confident: float = BF16_CONFIDENT,
                 n_classes: int | None = None, close_call: CloseCall | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.fast, self.exact, self.confident = fast, exact, confident
        self.n_classes, self.close_call = n_classes, close_call
        self.clock = clock  # seconds; a test passes a fake one to decide the switch without real timings
        self.handed_over = 0.0  # recent share of rows that needed `exact`
        self.timings = {"fast": deque(maxlen=TIMINGS_KEPT), "exact": deque(maxlen=TIMINGS_KEPT)}  # seconds a row
        self.calls = 0

    def needs_exact(self, output: torch.Tensor) -> torch.Tensor:
        """Rows whose answer `fast` may have got wrong: not confident, or a close call."""
        unsure = torch.softmax(output[:, :self.n_classes], dim=1).amax(dim=1) < self.confident
        if self.close_call is not None:
            unsure |= self.close_call(output)
        return unsure

    def exact_first(self) -> bool:
        """Whether `exact` alone is expected to cost clearly less a row than `fast` plus the share handed over."""
        if min(len(found) for found in self.timings.values()) < TIMINGS_NEEDED:
            return False
        fast, exact = (statistics.median(self.timings[name]) for name in ("fast", "exact"))
        return fast + self.handed_over * exact > exact * (1 + EXACT_FIRST_SAVING)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls % FAST_PROBE_EVERY and self.exact_first():
            output = self._timed("exact", batch)
            needed = self.needs_exact(output)  # judged on the exact answer: what `fast` would have handed over
        else:
            output = self._timed("fast", batch)
            needed = self.needs_exact(output)
            if needed.any():
                output[needed] = self._timed("exact", batch[needed])
        # Threads may race on these running averages; a lost update only delays the switch by a request.
        self.handed_over += RECENT_WEIGHT * (float(needed.float().mean()) - self.handed_over)
        return output

    def _timed(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        started = self.clock()
        output = (self.fast if name == "fast" else self.exact)(rows)
        self.timings[name].append((self.clock() - started) / len(rows))
        return output


def openvino_bf16_forward(graph: bytes, threads: int, n_classes: int | None = None,
                          close_call: CloseCall | None = None) -> Forward:
    """OpenVINO in bf16, recomputing in fp32 what is under `BF16_CONFIDENT`; only on CPUs with native bf16."""
    if not cpu_has_native_bf16():
        raise RuntimeUnavailable("this CPU has no native bf16, where bf16 would be slower than fp32")
    core = _openvino_core()
    model = core.read_model(graph)
    return GuardedForward(_compiled_forward(core, model, threads, "bf16"), _compiled_forward(core, model, threads, "f32"),
                          n_classes=n_classes, close_call=close_call)


def agreement(reference: Forward, candidate: Forward, size: int, seed: int = 0, n_classes: int | None = None) -> float:
    """Largest softmax difference (over the first `n_classes` columns) between two forwards on a fixed random batch."""
    batch = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))
    expected = torch.softmax(reference(batch)[:, :n_classes], dim=1).numpy()
    actual = torch.softmax(candidate(batch)[:, :n_classes], dim=1).numpy()
    return float(np.abs(expected - actual).max())


BUILDERS = {"openvino-bf16": openvino_bf16_forward, "openvino": openvino_forward, "onnx": onnx_forward}


def build_runtime(name: str, graph: bytes, threads: int, n_classes: int | None,
                  close_call: CloseCall | None = None) -> Forward:
    """One fast runtime over an ONNX graph (only the bf16 one needs to know where the logits end and its guard)."""
    if name == "openvino-bf16" and n_classes is not None:
        return BUILDERS[name](graph, threads, n_classes, close_call)
    return BUILDERS[name](graph, threads)


def probability_tolerance(runtime: str) -> float:
    """How far a runtime's probabilities may be from PyTorch's fp32 ones on the same input."""
    return BF16_MAX_PROBABILITY_DIFFERENCE if runtime == "openvino-bf16" else MAX_PROBABILITY_DIFFERENCE


def make_forward(model: torch.nn.Module, size: int, runtime: str = "auto", n_classes: int | None = None,
                 close_call: CloseCall | None = None, exact: bool = False,
                 export_elsewhere: Callable[[], None] | None = None) -> tuple[str, Forward]:
    """The fastest forward that agrees with PyTorch (OpenVINO bf16/fp32, ONNX Runtime, PyTorch); returns (name, fn).

    `n_classes`: the model's output starts with that many logits, followed by other columns (features).
    `close_call`: rows a bf16 runtime must recompute in fp32 besides the unconfident ones (see `GuardedForward`).
    `exact`: with `auto`, fp32 runtimes only, for numbers that served fp32 answers are compared against.
    `export_elsewhere`: exports an uncached graph in another process (see `graphs.cached_onnx_bytes`).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    reference = torch_forward(model)
    if runtime == "torch":
        return "torch", reference
    try:
        graph = cached_onnx_bytes(model, size, export_elsewhere)
    except Exception as exc:  # an exporter failure must not stop serving when PyTorch works
        reason = (str(exc).splitlines() or [exc.__class__.__name__])[0][:300]  # exporters append whole graphs
        if runtime != "auto":
            raise RuntimeUnavailable(f"{runtime} cannot run this model, the ONNX export failed: {reason}") from exc
        log.warning("serving with PyTorch: the ONNX export failed (%s: %s)", exc.__class__.__name__, reason)
        return "torch", reference
    for name in (EXACT_RUNTIMES if exact else FAST_RUNTIMES) if runtime == "auto" else (runtime,):
        try:
            candidate = build_runtime(name, graph, torch.get_num_threads(), n_classes, close_call)
            difference = agreement(reference, candidate, size, n_classes=n_classes)
        except Exception as exc:  # a runtime that is missing or cannot compile the graph
            if runtime != "auto":
                raise RuntimeUnavailable(f"{name} cannot run this model: {exc}") from exc
            log.warning("not serving with %s: %s: %s", name, exc.__class__.__name__, exc)
            continue
        if difference <= probability_tolerance(name):
            return name, candidate
        message = f"{name} disagrees with PyTorch by {difference:.2g} in probability"
        if runtime != "auto":
            raise RuntimeUnavailable(message)
        log.warning("not serving with %s: %s", name, message)
    log.warning("serving with PyTorch: no faster runtime is available")
    return "torch", reference
