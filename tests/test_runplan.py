"""The whole run is planned into its budget: each stage's epochs from every stage's probed time, re-planned as
the finished stages show how fast the machine really is."""
import json

import pytest
from fastai.callback.core import Callback

from tests.helpers import LITE0_STAGE, FakeClock
from training import stage as stage_module
from training.budget import ClockSchedule, EpochProbe
from training.recipes import load_recipe
from training.runner import TrainOptions, train_recipe
from training.runplan import StageEstimate, measured_speed, plan_run, stage_timing

# The shipped cpu recipe's stages, with epoch times (seconds) in the proportions measured on two machines
# (issue #28's AVX2-only run: 365 s frozen, about 700 s per 160-px epoch, 900 s at 224 px; 288 px estimated).
AVX2 = [StageEstimate("frozen-160", 1, 1, 365), StageEstimate("unfrozen-160", 1, 3, 700),
        StageEstimate("unfrozen-224", 0, 1, 900), StageEstimate("unfrozen-288", 1, 8, 1250)]
BF16 = [StageEstimate(e.name, e.low, e.high, e.epoch_seconds / 3) for e in AVX2]


def test_a_fast_machine_gets_every_stage_at_its_high_end_and_the_rest_goes_to_the_last():
    plan = plan_run(BF16, 3300, 0, reserve_seconds=200)
    assert plan.epochs == {"frozen-160": 1, "unfrozen-160": 3, "unfrozen-224": 1, "unfrozen-288": 4}
    assert plan.dropped == [] and plan.fits
    assert plan.planned_seconds <= 3300 - 200


def test_a_slow_machine_drops_the_optional_stage_and_keeps_the_low_ends():
    plan = plan_run(AVX2, 3300, 0, reserve_seconds=480)
    assert plan.epochs == {"frozen-160": 1, "unfrozen-160": 1, "unfrozen-224": 0, "unfrozen-288": 1}
    assert plan.dropped == ["unfrozen-224"] and plan.fits
    assert "dropped: unfrozen-224" in plan.describe()


def test_the_plan_reports_the_measured_speed_its_estimates_were_scaled_by():
    slowed = plan_run(AVX2, 3300, 0, reserve_seconds=480, speed=3.0)
    assert slowed.epochs == plan_run(AVX2, 3300, 0, reserve_seconds=480).epochs  # recorded, not applied twice
    assert "3.00x the probe's estimate" in slowed.describe() and slowed.to_json()["speed"] == 3.0


def test_when_even_the_low_ends_do_not_fit_the_plan_says_so():
    plan = plan_run(AVX2, 1800, 0, reserve_seconds=480)
    assert not plan.fits and plan.epochs["unfrozen-224"] == 0
    assert "do not fit" in plan.describe()


def test_speed_is_measured_over_estimated_time_within_limits():
    assert measured_speed([]) == 1.0
    assert measured_speed([(100, 300), (50, 150)]) == pytest.approx(3.0)
    assert measured_speed([(1, 1000)]) == 10.0 and measured_speed([(1000, 1)]) == 0.2


class SlowMachine(Callback):
    """Charges every batch `factor` times the probe's figure on a fake clock: a machine that is `factor` times
    slower than its probe said, from the first batch on."""

    order = ClockSchedule.order - 5  # before the clock reads the time

    def __init__(self, clock: FakeClock, probe_epoch, factor: float):
        self.clock, self.probe_epoch, self.factor = clock, probe_epoch, factor

    def after_batch(self):
        probe = self.probe_epoch(self.learn)
        seconds = probe.train_batch_seconds if self.training else probe.valid_batch_seconds
        self.clock.advance(seconds * self.factor)


def three_stage_recipe(path, budget_minutes):
    stage = LITE0_STAGE.replace("bs = 16", "bs = 4")  # many batches: the clock can stop close to its time
    stages = "".join(f"[[stages]]\nname = '{name}'\nepochs = {epochs}\n{stage}"
                     for name, epochs in (("head", 1), ("middle", "[0, 3]"), ("last", "[1, 40]")))
    path.write_text(f"budget_minutes = {budget_minutes}\nseed = 7\nvalid_pct = 0.25\n{stages}")
    return path


@pytest.mark.slow
def test_a_machine_three_times_slower_than_probed_drops_a_stage_and_keeps_the_budget(demo_data, tmp_path,
                                                                                     monkeypatch):
    fake = FakeClock()

    def probe_epoch(learn, dtype=None):  # what the machine's probe would say: 2 s a training batch, 0.6 s validating
        return EpochProbe(2.0, len(learn.dls.train), 0.6, len(learn.dls.valid))

    monkeypatch.setattr(stage_module, "probe_epoch", probe_epoch)
    real_callbacks = stage_module.precision_callbacks
    monkeypatch.setattr(stage_module, "precision_callbacks", lambda run: [*real_callbacks(run),
                                                                         SlowMachine(fake, probe_epoch, 3.0)])
    recipe = load_recipe(str(three_stage_recipe(tmp_path / "three.toml", budget_minutes=4)))
    lines = []
    train_recipe(demo_data, recipe, tmp_path / "run", TrainOptions(progress=False, clock=fake), echo=lines.append)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    head, middle, last = report["stages"]

    # Planned from the probe, the middle stage got all three epochs; after the head ran three times slower than
    # probed, the re-plan had no room for it.
    first = report["plan"]["first"]["epochs"]
    assert (first["head"], first["middle"]) == (1, 3) and first["last"] > 1
    assert middle["budget"]["plan"]["speed"] == pytest.approx(3.0, rel=0.01)
    assert middle["epochs"] == [] and report["plan"]["dropped"] == ["middle"]
    assert any("dropped by the plan" in line for line in lines)
    # The last stage ran on the clock, scaled by the measured speed, and ended where the budget less the reserve
    # for the end of the run says (within one slowed batch).
    assert last["budget"]["speed"] == pytest.approx(3.0, rel=0.01) and last["budget"]["stopped_on_clock"]
    assert len(last["epochs"]) >= 1
    trained = sum(row["seconds"] for stage in report["stages"] for row in stage["epochs"])
    budget = recipe.budget_minutes * 60
    assert abs(trained + report["plan"]["reserve_seconds"] - budget) <= 0.02 * budget

    from webapp import create_app
    page = create_app({"TESTING": True, "MODEL_PATH": str(tmp_path / "run"), "RUNTIME": "torch"}).test_client().get("/model")
    html = page.get_data(as_text=True)
    assert "middle: dropped by the plan" in html and "the plan\n    dropped middle" in html


def test_a_probe_taken_at_its_stages_start_is_scaled_up_but_never_down():
    from types import SimpleNamespace

    from training.stage import probe_scale

    faster = SimpleNamespace(timings=[(300.0, 150.0)], fresh_probes={1})  # the head ran in half its probed time
    assert probe_scale(faster, 1) == 1.0 and probe_scale(faster, 2) == pytest.approx(0.5)
    slower = SimpleNamespace(timings=[(100.0, 300.0)], fresh_probes={1})
    assert probe_scale(slower, 1) == probe_scale(slower, 2) == pytest.approx(3.0)


def test_an_epoch_the_clock_cut_short_is_left_out_of_the_measured_speed():
    rows = [{"seconds": 300.0}, {"seconds": 300.0}, {"seconds": 40.0}]
    assert stage_timing(300.0, rows, cut_short=True) == (600.0, 600.0)  # speed 1, not 640 / 900
    assert stage_timing(300.0, rows, cut_short=False) == (900.0, 640.0)
    assert stage_timing(300.0, rows[:1], cut_short=True) is None
