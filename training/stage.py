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

from .budget import ClockSchedule, plan_epochs, probe_epoch
from .devices import AUTOCAST_DTYPES, loader_workers, training_memory_format
from .distributed import data_parallel, rank0_choice
from .fsutil import atomic_path
from .learner import CPUAutocast, build_learner, build_model, make_dataloaders, make_loss, set_trainable
from .recipes import Stage
from .runfiles import StageRecord, lr_find_png
from .runstate import Run, load_checkpoint, save_checkpoint, save_progress, save_state

LR_FIND_STEPS, LR_FIND_MIN_STEPS, LR_FIND_PASSES = 100, 30, 5


class EpochTable(Callback):
    """Record the blog's per-epoch table: train_loss, valid_loss, error_rate, accuracy, seconds."""

    order = 60  # after the Recorder has logged the epoch

    def __init__(self, echo: Callable[[str], None] | None = None,
                 on_row: Callable[[list[dict]], None] | None = None):
        self.rows = []
        self.echo = echo  # set when fastai's own progress table is switched off
        self.on_row = on_row  # told of every finished epoch, so a killed stage's time is not forgotten

    def before_epoch(self):
        self.started = time.perf_counter()

    def after_epoch(self):
        names = ["train_loss", "valid_loss", "error_rate", "accuracy"]
        values = [float(v) for v in self.learn.recorder.values[-1]]
        row = {"epoch": len(self.rows) + 1, **dict(zip(names, values))}
        row["seconds"] = round(time.perf_counter() - self.started, 2)
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


def budgeted_fit(learn, run: Run, stage: Stage) -> tuple[int, ClockSchedule | None, dict]:
    """An elastic stage's epochs and the clock that holds it to what is left of the recipe's budget (none when not
    even its low end fits: it then runs those epochs), and how that was decided."""
    probe = probe_epoch(learn, AUTOCAST_DTYPES.get((run.device.type, run.precision)))
    spent = run.spent_before + time.monotonic() - run.started
    plan = plan_epochs(run.recipe.budget_minutes * 60, spent, probe.seconds, *stage.epochs,
                       finish_seconds=probe.scope_seconds)
    run.echo(plan.describe())
    budget = {**asdict(plan), "lost_seconds": run.state.lost_seconds, "probe": asdict(probe)}
    fit_seconds = rank0_choice(plan.fit_seconds)
    if fit_seconds is None:
        return stage.epochs[0], None, budget
    return stage.epochs[1], ClockSchedule(fit_seconds, probe.valid_batch_seconds * probe.valid_batches), budget


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
        epochs, schedule, record.budget = budgeted_fit(learn, run, stage)
        clock = [schedule] if schedule else []
    length = f"up to {epochs} epochs, annealed on the clock" if clock else f"{epochs} epochs"
    run.echo(f"stage {index + 1}/{len(run.recipe.stages)} {stage.name}: {stage.backbone} @{stage.size}px, "
             f"{'frozen' if stage.frozen else 'unfrozen'}, {length}, lr {stage.lr}")
    table = EpochTable(None if run.progress else run.echo, partial(save_progress, run, stage.name) if run.is_main else None)
    started = time.monotonic()
    with data_parallel(learn, run.device, run.echo):
        learn.fit_one_cycle(epochs, stage.lr_for_fit(record.lr_found), cbs=[*cbs, *clock, table])
    if clock:
        record.budget.update(fit_seconds_used=round(time.monotonic() - started, 2),
                             stopped_on_clock=clock[0].stopped_early)
    record.epochs = table.rows
    run.state.complete_stage(record)
    if run.is_main:
        save_checkpoint(learn.model, run.out, index + 1)
        save_state(run)
    return learn
