"""Timing a stage's epoch from a few real batches, and holding an elastic last stage to the budget on the clock."""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from fastai.callback.core import Callback, CancelFitException, CancelTrainException
from fastai.callback.schedule import ParamScheduler

from .distributed import rank0_choice
from .runplan import finish_reserve

# The scope detector's pass at the end, per image against one image of the probe's validation batches: every
# training photo twice (itself and a close-up) and every validation photo once, through the model and the ImageNet
# check on the serving runtime. On a CPU that is OpenVINO: measured at 0.43x PyTorch's fp32 validation time per image
# and 1.03x its bf16 time (docs/experiments.md, "The whole run, planned"); on a GPU, PyTorch in fp32 (not measured:
# twice an autocast image, and the check).
SCOPE_PASS_FACTORS = {("cpu", False): 0.5, ("cpu", True): 1.1, ("cuda", False): 1.5, ("cuda", True): 3.0}


@dataclass(frozen=True)
class EpochPlan:
    """How many epochs an elastic stage runs, and the figures that decided it (kept in the report)."""

    epochs: int
    budget_seconds: float
    spent_seconds: float
    epoch_seconds_estimate: float
    reserve_seconds: float
    fit_seconds: float  # the stage's time on the clock, its validation passes included
    low_end_fits: bool = True  # False: the stage is cut short of its low end to keep the budget

    def describe(self) -> str:
        """One line for the training log."""
        return (f"  budget {self.budget_seconds / 60:.0f} min, {self.spent_seconds / 60:.1f} spent; one epoch "
                f"~{self.epoch_seconds_estimate / 60:.1f} min, {self.reserve_seconds / 60:.1f} kept for the "
                f"export -> {self.fit_seconds / 60:.1f} min, "
                + (f"about {self.epochs} epochs" if self.low_end_fits else f"short of its {self.epochs} epochs"))


@dataclass(frozen=True)
class EpochProbe:
    """An epoch's time at a stage's size, from a few batches timed before the stage starts."""

    train_batch_seconds: float
    train_batches: int
    valid_batch_seconds: float
    valid_batches: int
    scope_factor: float = SCOPE_PASS_FACTORS[("cpu", True)]  # SCOPE_PASS_FACTORS for the probe's device and dtype

    @property
    def seconds(self) -> float:
        return self.train_batch_seconds * self.train_batches + self.valid_batch_seconds * self.valid_batches

    @property
    def scope_seconds(self) -> float:
        """The scope detector's pass over every photo and a close-up of each training photo at the end."""
        return self.scope_factor * self.valid_batch_seconds * (2 * self.train_batches + self.valid_batches)


def _seconds_per_batch(loader, step, device_type: str, warmup: int, timed: int) -> float:
    """Mean seconds of `step` over `timed` batches (loading included) after `warmup` untimed ones."""
    count = min(len(loader), warmup + timed)
    if count == 0:
        return 0.0
    warmup = min(warmup, count - 1)  # a tiny loader: time what there is
    batches = iter(loader)
    for index in range(count):
        if index == warmup:
            if device_type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        step(*next(batches))
    if device_type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (count - warmup)


PROBE_WARMUP_BATCHES, PROBE_TIMED_BATCHES = 2, 4  # untimed (allocations, caches) then timed, per loader


def probe_epoch(learn, autocast_dtype: torch.dtype | None = None, warmup: int = PROBE_WARMUP_BATCHES,
                timed: int = PROBE_TIMED_BATCHES) -> EpochProbe:
    """Time real training (forward and backward) and validation batches of `learn`; its weights end as they began."""
    model, device_type = learn.model, learn.dls.device.type
    # No optimizer step, so no weight moves, but BatchNorm's running statistics do: put them back afterwards.
    saved = copy.deepcopy(model.state_dict())
    autocast = partial(torch.autocast, device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    def train_step(x, y):
        with autocast():
            loss = learn.loss_func(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def valid_step(x, y):
        with torch.no_grad(), autocast():
            model(x)

    try:
        model.train()
        train = _seconds_per_batch(learn.dls.train, train_step, device_type, warmup, timed)
        model.eval()
        valid = _seconds_per_batch(learn.dls.valid, valid_step, device_type, warmup, timed)
    finally:
        model.load_state_dict(saved)
    factor = SCOPE_PASS_FACTORS[(device_type if device_type == "cuda" else "cpu", autocast_dtype is not None)]
    return EpochProbe(train, len(learn.dls.train), valid, len(learn.dls.valid), factor)


# On a machine too slow for even the last stage's low end, it still anneals on the clock for at least this share of
# an epoch at its size: a run slightly past its budget, rather than one that never trained at its final size.
LAST_STAGE_MIN_EPOCHS = 0.5


def plan_epochs(budget_seconds: float, spent_seconds: float, epoch_seconds: float, low: int, high: int,
                finish_seconds: float = 0.0) -> EpochPlan:
    """As many epochs as fit in what is left of the budget after a reserve for the final evaluation and export."""
    # `finish_seconds`: other work at the end, such as the scope detector's feature pass.
    reserve = finish_reserve(epoch_seconds, finish_seconds)
    room = budget_seconds - spent_seconds - reserve
    fits = math.floor(room / epoch_seconds) if epoch_seconds > 0 else high
    # Too little room for the low end: the clock still ends the stage, after at least LAST_STAGE_MIN_EPOCHS.
    return EpochPlan(epochs=max(low, min(high, fits)), budget_seconds=budget_seconds, spent_seconds=spent_seconds,
                     epoch_seconds_estimate=epoch_seconds, reserve_seconds=reserve,
                     fit_seconds=room if fits >= low else max(room, LAST_STAGE_MIN_EPOCHS * epoch_seconds),
                     low_end_fits=fits >= low)


class ClockSchedule(Callback):
    """Drive a one-cycle schedule by the clock: its position is the share of the stage's seconds spent (or of its
    steps, whichever is further), so the learning rate anneals just as the time runs out on a slow machine, a fast
    one, or one that slows down halfway. The fit is then cut short, after a last validation pass."""

    order = ParamScheduler.order - 1  # sets the position just before the scheduler reads it
    run_valid = False

    def __init__(self, seconds: float, valid_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.valid_seconds = valid_seconds  # one validation pass, estimated; then as last measured
        self.clock = clock
        self.stopped_early = False

    def before_fit(self):
        self.start = self.last_batch_end = self.clock()
        self.batch_seconds = self.position = 0.0
        self.out_of_time = False

    def _train_seconds_left(self) -> float:
        return self.seconds - self.valid_seconds - (self.clock() - self.start)

    def before_epoch(self):
        if self.out_of_time:
            raise CancelFitException()

    def before_train(self):
        self.last_batch_end = self.clock()  # a validation pass is no batch

    def before_batch(self):
        by_steps = self.train_iter / (self.n_iter * self.n_epoch)
        train_seconds = self.seconds - self.valid_seconds
        by_clock = (self.clock() - self.start) / train_seconds if train_seconds > 0 else 1.0
        # never back: a validation pass measured shorter than estimated must not raise the learning rate again
        self.position = max(self.position, rank0_choice(min(1.0, max(by_steps, by_clock))))
        self.learn.pct_train = self.position

    def after_batch(self):
        now = self.clock()
        self.batch_seconds, self.last_batch_end = now - self.last_batch_end, now
        # Stop when the next batch would end nearer the deadline than this point does (within half a batch of it).
        if rank0_choice(self._train_seconds_left() < self.batch_seconds / 2):
            self.out_of_time = self.stopped_early = True
            raise CancelTrainException()

    def after_cancel_train(self):
        # fastai's Recorder drops a cancelled phase's training loss, and with it every column after it would shift:
        # a phase the clock cut short is still a phase, so its loss is logged as usual.
        self.learn.recorder.cancel_train = False

    def before_validate(self):
        self.valid_start = self.clock()

    def after_validate(self):
        self.valid_seconds = self.clock() - self.valid_start
