"""A run's state on disk: the split, the completed stages, checkpoints, and what `--resume` may continue."""
from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .dataset import DatasetScan, split_items
from .fsutil import atomic_path
from .recipes import Recipe
from .runfiles import (
    RunState,
    Split,
    SplitRow,
    StageRecord,
    checkpoint_file,
    read_split,
    read_state,
    write_split,
    write_state,
)


class RunError(RuntimeError):
    """A training run that cannot start or continue, with the reason."""


@dataclass
class Run:
    """Everything the stages of one run share: where it writes, what it trains on, and how."""

    recipe: Recipe
    out: Path
    scan: DatasetScan
    frame: pd.DataFrame
    state: RunState
    device: torch.device
    precision: str
    pretrained: bool
    progress: bool
    is_main: bool
    echo: Callable[[str], None]
    started: float = 0.0  # clock() when this process started the run
    clock: Callable[[], float] = time.monotonic  # the budget's clock
    # Time spent by earlier processes of a resumed run (every epoch they finished), for an elastic stage's budget.
    spent_before: float = 0.0
    # A budgeted run's probed epoch time per stage index (those in fresh_probes timed at the stage's own start),
    # and (probed, measured) seconds of each stage it trained.
    probes: dict = field(default_factory=dict)
    fresh_probes: set = field(default_factory=set)
    timings: list = field(default_factory=list)

    @property
    def completed(self) -> list[StageRecord]:
        return self.state.completed


def split_frame(scan: DatasetScan, recipe: Recipe, out: Path, resume: bool, write: bool = True) -> pd.DataFrame:
    """The run's train/valid split: made once, saved with the run and reused by every stage and on resume."""
    split = read_split(out, missing_ok=True) if resume else None
    if split is not None:
        known = {item.relpath for item in scan.items}
        missing = [row.path for row in split.rows if row.path not in known]
        if missing:
            raise RunError(f"cannot resume: {len(missing)} images of the saved split are gone (e.g. {missing[0]})")
    else:
        is_valid = split_items(scan.items, recipe.valid_pct, recipe.seed)
        split = Split(recipe.seed, recipe.valid_pct,
                      [SplitRow(item.relpath, item.label, valid) for item, valid in zip(scan.items, is_valid)])
        if write:  # every rank computes the same split from the seed; one of them saves it
            write_split(out, split)
    return pd.DataFrame({"path": [str(scan.root / row.path) for row in split.rows],
                         "label": [row.label for row in split.rows],
                         "is_valid": [row.is_valid for row in split.rows]})


def load_state(out: Path, recipe: Recipe, scan: DatasetScan, resume: bool, pretrained: bool) -> RunState:
    """A fresh run state, or the saved one when `resume` may continue it (else a RunError saying why not)."""
    state = read_state(out)
    if state is None:
        return RunState(recipe=recipe.to_dict(), dataset_fingerprint=scan.fingerprint(), pretrained=pretrained,
                        started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    if not resume:
        raise RunError(
            f"{out} already holds a run ({len(state.completed)} of {len(state.recipe['stages'])} stages done); "
            f"pass --resume to continue it, or choose another --out"
        )
    if state.recipe != json.loads(json.dumps(recipe.to_dict())):  # compare as JSON: tuples became lists
        raise RunError(f"cannot resume: the recipe differs from the one {out} was started with")
    if state.dataset_fingerprint != scan.fingerprint():
        raise RunError(f"cannot resume: the data folder changed since {out} was started")
    if state.pretrained != pretrained:
        raise RunError("cannot resume: --pretrained/--no-pretrained differs from the original run")
    state.record_lost_seconds()
    return state


def save_state(run: Run) -> None:
    """Write the run state atomically."""
    write_state(run.out, run.state)


def save_progress(run: Run, stage_name: str, rows: list[dict]) -> None:
    """Note the running stage's finished epochs in the run state (a resumed run counts them as spent)."""
    run.state.mark_running(stage_name, rows)
    save_state(run)


def save_checkpoint(model: torch.nn.Module, out: Path, stage_number: int) -> None:
    """The weights after stage `stage_number` (1-based), written atomically."""
    with atomic_path(checkpoint_file(out, stage_number)) as tmp:
        torch.save(model.state_dict(), tmp)


def load_checkpoint(model: torch.nn.Module, out: Path, stage_number: int) -> torch.nn.Module:
    """`model` with the weights saved after stage `stage_number`."""
    state = torch.load(checkpoint_file(out, stage_number), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model
