"""One stage of a recipe: its learner, its learning rate (given or found), its epochs (given or budgeted), its fit."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import valley
from fastai.torch_core import noop

from .budget import ClockSchedule, EpochPlan, EpochProbe, plan_epochs, probe_epoch
from .devices import AUTOCAST_DTYPES, loader_workers, training_memory_format
from .distributed import data_parallel, rank0_choice
from .fsutil import atomic_path
from .learner import CPUAutocast, build_learner, build_model, make_dataloaders, make_loss, set_trainable
from .recipes import Stage
from .runfiles import StageRecord, lr_find_png
from .runplan import RunPlan, StageEstimate, finish_reserve, measured_speed, plan_run, stage_timing
from .runstate import Run, load_checkpoint, save_checkpoint, save_progress, save_state

LR_FIND_STEPS, LR_FIND_MIN_STEPS, LR_FIND_PASSES = 100, 30, 5


class EpochTable(Callback):
    """Record the blog's per-epoch table: train_loss, valid_loss, error_rate, accuracy, seconds."""

    order = 60  # after the Recorder has logged the epoch

    def __init__(self, echo: Callable[[str], None] | None = None,
                 on_row: Callable[[list[dict]], None] | None = None, clock: Callable[[], float] = time.perf_counter):
        self.rows = []
        self.clock = clock
        self.echo = echo  # set when fastai's own progress table is switched off
        self.on_row = on_row  # told of every finished epoch, so a killed stage's time is not forgotten

    def before_epoch(self):
        self.started = self.clock()

    def after_epoch(self):
        names = ["train_loss", "valid_loss", "error_rate", "accuracy"]
        values = [float(v) for v in self.learn.recorder.values[-1]]
        row = {"epoch": len(self.rows) + 1, **dict(zip(names, values))}
        row["seconds"] = round(self.clock() - self.started, 2)
        self.rows.append(row)
        if self.on_row:
            self.on_row(self.rows)
        if self.echo:
            self.echo("  epoch {epoch}: train_loss {train_loss:.4f} valid_loss {valid_loss:.4f} "
                      "accuracy {accuracy:.4f} ({seconds:.0f}s)".format(**row))


def precision_callbacks(run: Run) -> list:
    """The fastai callbacks that make a fit run under the run's autocast dtype (none for fp32)."""
    if (run.device.type, run.precision) not in AUTOCAST_DTYPES:
        return []
    return [CPUAutocast() if run.device.type == "cpu" else MixedPrecision(amp_mode=run.precision)]


def recipe_dataloaders(frame, classes: list[str], stage: Stage, seed: int, device: torch.device):
    """A stage's DataLoaders over a split frame, as a run builds them: its size, batch size and augmentation."""
    return make_dataloaders(frame, classes, stage.backbone, stage.size, stage.bs, stage.augmentation, seed=seed,
                            device=device, num_workers=loader_workers(device))


def stage_dataloaders(run: Run, stage: Stage):
    """The stage's DataLoaders over the run's split."""
    return recipe_dataloaders(run.frame, run.scan.classes, stage, run.recipe.seed, run.device)


def stage_learner(run: Run, index: int, learn=None):
    """The learner stage `index` trains: the previous stage's at a new image size, else one restored from the last
    checkpoint (a run resumed mid-backbone), else a fresh pretrained one."""
    stage = run.recipe.stages[index]
    dls = stage_dataloaders(run, stage)
    previous = run.recipe.stages[index - 1] if index else None
    if learn is not None and previous is not None and previous.backbone == stage.backbone:
        learn.dls = dls  # progressive resizing: same weights, new image size
        learn.loss_func = make_loss(stage.label_smoothing)
        return learn
    model = None
    if previous is not None and previous.backbone == stage.backbone:
        model = load_checkpoint(build_model(stage.backbone, len(run.scan.classes), pretrained=False), run.out, index)
    learn = build_learner(dls, stage.backbone, run.pretrained, stage.label_smoothing, model=model)
    learn.model.to(run.device, memory_format=training_memory_format(run.device, run.precision))
    learn.path = run.out
    return learn


def final_learner(run: Run):
    """The last stage's learner with the last checkpoint's weights, for a run that crashed while exporting."""
    last = len(run.recipe.stages)
    model = load_checkpoint(build_model(run.recipe.stages[-1].backbone, len(run.scan.classes), pretrained=False),
                            run.out, last)
    dls = stage_dataloaders(run, run.recipe.stages[-1])
    return build_learner(dls, run.recipe.stages[-1].backbone, pretrained=False, model=model.to(run.device))


def find_lr(learn, run: Run, stage_name: str, cbs) -> float:
    """Run fastai's lr_find, save its plot, and return the suggested (valley) learning rate."""
    import matplotlib.pyplot as plt

    # fastai's 100 steps, but no more than a few passes over a small training set: the sweep is no better for
    # showing the same photos dozens of times.
    steps = min(LR_FIND_STEPS, max(LR_FIND_MIN_STEPS, LR_FIND_PASSES * len(learn.dls.train)))
    with learn.added_cbs(cbs):  # lr_find takes no cbs argument; run it under the same precision as the fit
        suggestion = learn.lr_find(num_it=steps, suggest_funcs=(valley,), show_plot=True)
    with atomic_path(lr_find_png(run.out, stage_name)) as tmp:
        plt.gcf().savefig(tmp, format="png")
    plt.close("all")
    return float(suggestion.valley)


def probe_stages(run: Run, start: int) -> dict[int, EpochProbe]:
    """An epoch's time for every stage from `start` on, from a few real batches at its size, batch size and frozen
    layers, on a throwaway model per backbone (the weights do not change an epoch's time)."""
    learners, probes = {}, {}
    for index in range(start, len(run.recipe.stages)):
        stage = run.recipe.stages[index]
        dls = stage_dataloaders(run, stage)
        learn = learners.get(stage.backbone)
        if learn is None:
            learn = learners[stage.backbone] = build_learner(dls, stage.backbone, pretrained=False)
            learn.model.to(run.device, memory_format=training_memory_format(run.device, run.precision))
        learn.dls, learn.loss_func = dls, make_loss(stage.label_smoothing)
        set_trainable(learn, stage.frozen, stage.frozen_groups, stage.train_bn)
        probes[index] = probe_epoch(learn, AUTOCAST_DTYPES.get((run.device.type, run.precision)))
    return probes


def spent_seconds(run: Run) -> float:
    """Seconds of the budget spent so far, by this process and by any it resumed."""
    return run.spent_before + run.clock() - run.started


def probe_scale(run: Run, index: int) -> float:
    """What stage `index`'s probe is multiplied by: how fast the finished stages ran against their probes; for a
    probe the stage took of its own batches at its start, only when they ran slower (a frozen head's probe said 2x
    what its epoch took, and scaling a fresh probe down by that cut the next stage to two of its three epochs)."""
    speed = measured_speed(run.timings)
    return max(1.0, speed) if index in run.fresh_probes else speed


def plan_from(run: Run, index: int) -> RunPlan:
    """The plan for stages `index` onwards, from their probes scaled by how fast the finished stages really ran."""
    stages, last = run.recipe.stages, len(run.recipe.stages) - 1
    estimates = [StageEstimate(s.name, *(s.epochs if s.elastic else (s.epochs, s.epochs)),
                               run.probes[i].seconds * probe_scale(run, i))
                 for i, s in enumerate(stages) if i >= index]
    reserve = finish_reserve(run.probes[last].seconds * probe_scale(run, last),
                             run.probes[last].scope_seconds * probe_scale(run, last))
    plan = plan_run(estimates, run.recipe.budget_minutes * 60, spent_seconds(run), reserve,
                    measured_speed(run.timings))
    run.echo(plan.describe())
    return plan


def planned_fit(learn, run: Run, index: int, stage: Stage) -> tuple[int, ClockSchedule | None, dict]:
    """An elastic stage's epochs and the clock that holds it to its share of the budget (none when the plan drops
    it), and how that was decided: a probe of its own batches at its start, and the plan for it and the stages after
    it, every estimate scaled by how fast the finished stages ran against their probes."""
    probe = run.probes[index] = probe_epoch(learn, AUTOCAST_DTYPES.get((run.device.type, run.precision)))
    run.fresh_probes.add(index)
    plan, scale = plan_from(run, index), probe_scale(run, index)
    budget_seconds, estimate = run.recipe.budget_minutes * 60, probe.seconds * scale
    if index == len(run.recipe.stages) - 1:  # the last stage: whatever is left, after the reserve for the end
        share = plan_epochs(budget_seconds, plan.spent_seconds, estimate, *stage.epochs,
                            finish_seconds=probe.scope_seconds * scale)
        epochs = stage.epochs[1]
    else:  # an earlier one: the time of the epochs the plan gave it; the clock cuts it there if it runs slower
        planned = rank0_choice(plan.epochs[stage.name])
        share = EpochPlan(epochs=planned, budget_seconds=budget_seconds, spent_seconds=plan.spent_seconds,
                          epoch_seconds_estimate=estimate, reserve_seconds=plan.reserve_seconds,
                          fit_seconds=planned * estimate, low_end_fits=plan.fits)
        epochs = planned
    run.echo(share.describe())
    budget = {**asdict(share), "lost_seconds": run.state.lost_seconds, "probe": asdict(probe), "speed": scale,
              "plan": plan.to_json()}
    if not epochs:
        return 0, None, budget
    clock = ClockSchedule(rank0_choice(share.fit_seconds), probe.valid_batch_seconds * probe.valid_batches * scale,
                          clock=run.clock)
    return epochs, clock, budget


def train_stage(run: Run, index: int, learn=None):
    """Train stage `index`, checkpoint it and record it in the run state; returns its learner."""
    stage = run.recipe.stages[index]
    learn = stage_learner(run, index, learn)
    if not run.progress:
        learn.remove_cbs(ProgressCallback)
        learn.logger = noop  # EpochTable echoes a readable line per epoch instead of fastai's raw lists
    cbs = precision_callbacks(run)
    set_trainable(learn, stage.frozen, stage.frozen_groups, stage.train_bn)
    record = StageRecord(stage=stage.name, backbone=stage.backbone, size=stage.size, bs=stage.bs,
                         frozen=stage.frozen, frozen_groups=stage.frozen_groups, train_bn=stage.train_bn,
                         lr=stage.lr)
    if stage.lr == "find":
        record.lr_found = find_lr(learn, run, stage.name, cbs)
        run.echo(f"  lr_find suggests {record.lr_found:.2e}")
    epochs, clock = stage.epochs, []
    if stage.elastic:
        epochs, schedule, record.budget = planned_fit(learn, run, index, stage)
        clock = [schedule] if schedule else []
    elif run.probes:  # a fixed stage of a budgeted run: the plan as it stands when it starts
        record.budget = {"plan": plan_from(run, index).to_json()}
    if epochs == 0:
        run.echo(f"stage {index + 1}/{len(run.recipe.stages)} {stage.name}: dropped by the plan (no epoch of it "
                 "fits the budget)")
        return finish_stage(run, index, learn, record)
    length = f"up to {epochs} epochs, annealed on the clock" if clock else f"{epochs} epochs"
    run.echo(f"stage {index + 1}/{len(run.recipe.stages)} {stage.name}: {stage.backbone} @{stage.size}px, "
             f"{'frozen' if stage.frozen else 'unfrozen'}, {length}, lr {stage.lr}")
    table = EpochTable(None if run.progress else run.echo, partial(save_progress, run, stage.name) if run.is_main else None,
                       clock=run.clock)
    started = run.clock()
    with data_parallel(learn, run.device, run.echo):
        learn.fit_one_cycle(epochs, stage.lr_for_fit(record.lr_found), cbs=[*cbs, *clock, table])
    if clock:
        record.budget.update(fit_seconds_used=round(run.clock() - started, 2),
                             stopped_on_clock=clock[0].stopped_early)
    record.epochs = table.rows
    timing = stage_timing(run.probes[index].seconds, table.rows, bool(clock) and clock[0].stopped_early) \
        if run.probes else None
    if timing:
        run.timings.append(timing)
    return finish_stage(run, index, learn, record)


def finish_stage(run: Run, index: int, learn, record: StageRecord):
    """Record stage `index` as complete and checkpoint its weights (a dropped stage's are the previous stage's)."""
    run.state.complete_stage(record)
    if run.is_main:
        save_checkpoint(learn.model, run.out, index + 1)
        save_state(run)
    return learn
