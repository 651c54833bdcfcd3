"""Run a recipe stage by stage, checkpointing each stage, and export the learner with its report."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from fastai.torch_core import noop, num_distrib, rank_distrib

from .backbones import get_backbone
from .dataset import check_trainable, scan_dataset
from .devices import pick_device, pick_precision
from .distributed import this_process_only
from .finish import finish_run
from .recipes import Recipe
from .runfiles import EXPORT, read_report
from .runstate import Run, load_state, split_frame
from .stage import final_learner, probe_stages, train_stage


@dataclass
class TrainOptions:
    """How to run a recipe, beyond the recipe itself."""

    device: str = "auto"          # auto, cpu or cuda
    precision: str = "auto"       # auto, fp32 or bf16 (auto: bf16 where the hardware does it fast)
    pretrained: bool = True
    resume: bool = False
    progress: bool = True
    clock: Callable[[], float] = time.monotonic  # the budget's clock (tests pass a fake one)


def train_recipe(data_dir: str | Path, recipe: Recipe, out: str | Path, options: TrainOptions | None = None,
                 echo: Callable[[str], None] = print) -> dict:
    """Train every stage of `recipe` on `data_dir`, write the run directory's files, and return the report."""
    options = options or TrainOptions()
    started = options.clock()
    run = prepare_run(data_dir, recipe, Path(out), options, echo)
    if run.state.exported and (run.out / EXPORT).exists():
        run.echo(f"{run.out} is already complete; nothing to do.")
        return read_report(run.out)
    run.started = started
    remaining = recipe.stages[len(run.completed):]
    if recipe.budget_minutes and any(stage.elastic for stage in remaining):
        run.echo(f"Timing an epoch of each of the {len(remaining)} stages to plan the {recipe.budget_minutes:g}-minute "
                 "budget ...")
        run.probes = probe_stages(run, len(run.completed))
    learn = None
    for index, stage in enumerate(recipe.stages):
        if index < len(run.completed):
            run.echo(f"stage {index + 1}/{len(recipe.stages)} {stage.name}: done earlier, skipped")
        else:
            learn = train_stage(run, index, learn)
    if not run.is_main:  # under `accelerate launch` every rank trains; only rank 0 exports and reports
        return {}
    if learn is None:  # every stage was done before a crash during export
        learn = final_learner(run)
    learn.model.to(memory_format=torch.contiguous_format)  # exported as every runtime and the web app expect it
    with this_process_only():
        return finish_run(learn, run)


def prepare_run(data_dir: str | Path, recipe: Recipe, out: Path, options: TrainOptions, echo) -> Run:
    """Check everything a run needs before any training: device, data, saved state, weights; then the split."""
    out.mkdir(parents=True, exist_ok=True)
    is_main, processes = rank_distrib() == 0, num_distrib()
    echo = echo if is_main else noop  # only rank 0 prints and writes files
    device = pick_device(options.device)
    precision = pick_precision(options.precision, device)
    scan = scan_dataset(data_dir, progress=options.progress)
    check_trainable(scan)
    state = load_state(out, recipe, scan, options.resume, options.pretrained)
    run = Run(recipe=recipe, out=out, scan=scan, frame=None, state=state, device=device, precision=precision,
              pretrained=options.pretrained, progress=options.progress, is_main=is_main, echo=echo,
              spent_before=state.spent_seconds, clock=options.clock)
    if state.exported and (out / EXPORT).exists():
        return run
    if options.pretrained:  # fail before any work if a backbone's weights are missing
        for name in dict.fromkeys(s.backbone for s in recipe.stages):
            get_backbone(name).body(pretrained=True)
    run.frame = split_frame(scan, recipe, out, options.resume, write=is_main)
    echo(f"{len(scan.items)} images, {len(scan.classes)} classes, "
         f"{int(run.frame.is_valid.sum())} for validation; device {device.type}, precision {precision}"
         + (f", {processes} processes" if processes > 1 else ""))
    return run
