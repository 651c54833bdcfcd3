"""An elastic last stage gets as many epochs as the budget leaves room for, within its range."""
import copy
import time

import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.torch_core import noop

from tests.helpers import FakeClock, demo_frame
from training.budget import ClockSchedule, EpochProbe, plan_epochs, probe_epoch
from training.learner import build_learner, make_dataloaders
from training.stage import EpochTable


def test_probe_times_real_batches_and_leaves_the_model_as_it_was(demo_data):
    frame, classes = demo_frame(demo_data)
    learn = build_learner(make_dataloaders(frame, classes, "efficientnet_lite0", 64, 4), "efficientnet_lite0")
    before = copy.deepcopy(learn.model.state_dict())

    probe = probe_epoch(learn, warmup=1, timed=3)
    assert (probe.train_batches, probe.valid_batches) == (len(learn.dls.train), len(learn.dls.valid))
    assert probe.train_batch_seconds > probe.valid_batch_seconds > 0  # a backward pass costs more than none
    after = learn.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # BatchNorm statistics included
    assert all(p.grad is None for p in learn.model.parameters())

    def fit_seconds():
        start = time.perf_counter()
        learn.fit(1)
        return time.perf_counter() - start

    # the quicker of two epochs: one slowed by other work on the machine says nothing about the probe
    assert probe.seconds / 3 < min(fit_seconds(), fit_seconds()) < probe.seconds * 3


@pytest.mark.parametrize("spent, expected", [
    (0, 6),        # plenty of room: capped at the high end
    (2000, 4),     # 3600 - 2000 - (60 + 60) = 1480 s of room -> 4 epochs of 300 s
    (2400, 3),     # 1080 s of room
    (3300, 1),     # 180 s: less than the low end, which the clock cuts short
])
def test_plan_fits_epochs_in_what_is_left(spent, expected):
    plan = plan_epochs(3600, spent, 300.0, 1, 6)
    assert plan.reserve_seconds == pytest.approx(0.2 * 300 + 60)
    assert plan.epochs == expected
    # the fit is given the whole room and the clock ends it, even short of the low end
    assert plan.fit_seconds == pytest.approx(3600 - spent - 120)
    assert plan.low_end_fits == (spent != 3300)


def test_a_last_stage_with_no_room_left_still_anneals_for_half_an_epoch():
    plan = plan_epochs(3600, 3600, 300.0, 1, 6)
    assert plan.fit_seconds == pytest.approx(150) and not plan.low_end_fits
    assert "short of its 1 epochs" in plan.describe()


def test_plan_describes_itself_for_the_log():
    line = plan_epochs(3000, 600, 240.0, 2, 5).describe()
    assert "budget 50 min" in line and "about 5 epochs" in line


def test_the_scope_detectors_feature_pass_is_kept_out_of_the_epochs():
    probe = EpochProbe(train_batch_seconds=1.0, train_batches=100, valid_batch_seconds=0.5, valid_batches=20,
                       scope_factor=1.5)
    # every training photo twice (itself and a close-up) and every validation photo once: 1.5 * 0.5 s * 220 batches
    assert probe.scope_seconds == pytest.approx(165.0)
    without = plan_epochs(3600, 2200, 300.0, 1, 6)
    with_scope = plan_epochs(3600, 2200, 300.0, 1, 6, finish_seconds=probe.scope_seconds)
    assert with_scope.reserve_seconds == pytest.approx(without.reserve_seconds + 165.0)
    assert (without.epochs, with_scope.epochs) == (4, 3)  # 1280 s of room, then 1115 s


def test_the_scope_pass_is_cheaper_against_an_fp32_probe_than_a_bf16_one(demo_data):
    frame, classes = demo_frame(demo_data)
    learn = build_learner(make_dataloaders(frame, classes, "efficientnet_lite0", 64, 4), "efficientnet_lite0")
    fp32, bf16 = probe_epoch(learn, None, warmup=1, timed=1), probe_epoch(learn, torch.bfloat16, warmup=1, timed=1)
    # OpenVINO's pass costs about PyTorch's bf16 time per image, and well under its fp32 time
    assert (fp32.scope_factor, bf16.scope_factor) == (0.5, 1.1)


class BatchCost(Callback):
    """Charges every batch, training and validation, `seconds` on a fake clock; `factor` times that once
    `after_seconds` have passed on it (a machine that slows down halfway)."""

    order = ClockSchedule.order - 5  # the schedule's own timing must see the batch's cost
    run_valid = True

    def __init__(self, clock: FakeClock, seconds: float, factor: float, after_seconds: float):
        self.clock, self.seconds, self.factor, self.after_seconds = clock, seconds, factor, after_seconds

    def before_fit(self):
        self.fit_start = self.clock()

    def after_batch(self):
        slowed = self.clock() - self.fit_start >= self.after_seconds
        self.clock.advance(self.seconds * (self.factor if slowed else 1.0))


def clocked_learner(demo_data):
    frame, classes = demo_frame(demo_data)
    learn = build_learner(make_dataloaders(frame, classes, "efficientnet_lite0", 64, 4), "efficientnet_lite0")
    learn.remove_cbs(ProgressCallback)
    learn.logger = noop
    return learn


@pytest.mark.slow
def test_a_stage_slowed_halfway_still_ends_on_its_clock_with_the_rate_annealed(demo_data):
    learn = clocked_learner(demo_data)
    fake, seconds, batch_seconds = FakeClock(), 16.0, 0.25
    clock, table = ClockSchedule(seconds, valid_seconds=0.5, clock=fake), EpochTable()
    learn.fit_one_cycle(100, 1e-3, cbs=[clock, BatchCost(fake, batch_seconds, 1.5, after_seconds=seconds / 2), table])

    assert clock.stopped_early and 1 < len(learn.recorder.values) < 100
    # within one slowed batch of the deadline (half a batch mid-epoch; an epoch's first batch runs even when it
    # overshoots, as stopping before it would end further off, by a whole validation pass)
    assert abs(fake() - seconds) <= 1.5 * batch_seconds
    # the last, cut-short epoch is still a whole row of the table, its training loss included
    assert len(table.rows) == len(learn.recorder.values)
    assert all(len(values) == 4 for values in learn.recorder.values)
    assert 0 < table.rows[-1]["train_loss"] and 0 <= table.rows[-1]["accuracy"] <= 1
    lrs = learn.recorder.hps["lr"]
    assert max(lrs) == pytest.approx(1e-3, rel=0.05)  # the one cycle peaked ...
    # ... and was annealed by the time the clock ran out: the rate the last batch trained with (the recorder leaves
    # out the batch the clock cancelled after it ran)
    assert learn.opt.hypers[-1]["lr"] <= lrs[-1] and learn.opt.hypers[-1]["lr"] < 0.02 * max(lrs)


@pytest.mark.slow
def test_a_stage_with_time_to_spare_keeps_fastais_own_schedule(demo_data):
    learn, plain = clocked_learner(demo_data), clocked_learner(demo_data)
    clock = ClockSchedule(600.0, valid_seconds=0.5)
    learn.fit_one_cycle(2, 1e-3, cbs=[clock])
    plain.fit_one_cycle(2, 1e-3)
    assert not clock.stopped_early and len(learn.recorder.values) == 2
    # the same schedule, but for the clock's few milliseconds of position in the first batches
    assert learn.recorder.hps["lr"] == pytest.approx(plain.recorder.hps["lr"], rel=1e-3)
