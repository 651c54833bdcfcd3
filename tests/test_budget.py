"""An elastic last stage gets as many epochs as the budget leaves room for, within its range."""
import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from training.budget import EpochProbe, plan_epochs, probe_epoch
from training.learner import build_learner, make_dataloaders


def test_probe_times_real_batches_and_leaves_the_model_as_it_was(demo_data):
    frame = pd.DataFrame({"path": [str(p) for p in sorted(demo_data.rglob("*.jpg"))]})
    frame["is_valid"] = np.arange(len(frame)) % 4 == 0
    classes = sorted({Path(p).parent.name for p in frame["path"]})
    learn = build_learner(make_dataloaders(frame, classes, "efficientnet_lite0", 64, 4), "efficientnet_lite0")
    before = copy.deepcopy(learn.model.state_dict())

    probe = probe_epoch(learn, warmup=1, timed=3)
    assert (probe.train_batches, probe.valid_batches) == (len(learn.dls.train), len(learn.dls.valid))
    assert probe.train_batch_seconds > probe.valid_batch_seconds > 0  # a backward pass costs more than none
    after = learn.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # BatchNorm statistics included
    assert all(p.grad is None for p in learn.model.parameters())

    start = time.perf_counter()
    learn.fit(1)
    assert probe.seconds / 3 < time.perf_counter() - start < probe.seconds * 3


@pytest.mark.parametrize("spent, expected", [
    (0, 6),        # plenty of room: capped at the high end
    (2000, 4),     # 3600 - 2000 - (60 + 60) = 1480 s of room -> 4 epochs of 300 s
    (2400, 3),     # 1080 s of room
    (3300, 1),     # no room left: still the low end
])
def test_plan_fits_epochs_in_what_is_left(spent, expected):
    plan = plan_epochs(3600, spent, 300.0, 1, 6)
    assert plan.reserve_seconds == pytest.approx(0.2 * 300 + 60)
    assert plan.epochs == expected


def test_plan_describes_itself_for_the_log():
    line = plan_epochs(3000, 600, 240.0, 2, 5).describe()
    assert "budget 50 min" in line and "-> 5 epochs" in line


def test_the_scope_detectors_feature_pass_is_kept_out_of_the_epochs():
    probe = EpochProbe(train_batch_seconds=1.0, train_batches=100, valid_batch_seconds=0.5, valid_batches=20)
    # every photo once more through the model in fp32 and the ImageNet check: 3 * 0.5 s * 120 batches
    assert probe.scope_seconds == pytest.approx(180.0)
    without = plan_epochs(3600, 2200, 300.0, 1, 6)
    with_scope = plan_epochs(3600, 2200, 300.0, 1, 6, finish_seconds=probe.scope_seconds)
    assert with_scope.reserve_seconds == pytest.approx(without.reserve_seconds + 180.0)
    assert (without.epochs, with_scope.epochs) == (4, 3)  # 1280 s of room, then 1100 s
