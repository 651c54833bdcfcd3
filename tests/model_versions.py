"""Runs for the model-version tests: a run copied into a models folder, and a copy made worse on purpose."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from training.fsutil import sha256_file
from training.loading import load_model
from training.runfiles import EXPORT, REPORT, read_report, write_report


def add_run(models: Path, name: str, source: Path) -> Path:
    """`source`'s model and report copied into `models/name` (all the server and the gate read of a run)."""
    run = models / name
    run.mkdir(parents=True)
    for file in (EXPORT, REPORT):
        shutil.copy(source / file, run / file)
    return run


def swapped_run(models: Path, name: str, source: Path) -> Path:
    """A copy of `source` whose last layer answers every photo with the next class: worse by construction, with
    the same features and scope detector, so only its answers differ."""
    learn = load_model(source).learn
    last = [m for m in learn.model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # row k now scores class k-1's evidence: a photo once answered k is answered k+1
        last.weight.copy_(last.weight.roll(1, dims=0))
        if last.bias is not None:
            last.bias.copy_(last.bias.roll(1, dims=0))
    run = models / name
    run.mkdir(parents=True)
    learn.export(run.absolute() / EXPORT)  # absolute: fastai joins a relative name to where it was trained
    write_report(run, {**read_report(source), "model_sha256": sha256_file(run / EXPORT)})
    return run
