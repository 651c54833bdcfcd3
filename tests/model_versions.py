"""Runs for the model-version tests: a run copied into a models folder, and a copy made worse on purpose."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from training.fsutil import sha256_file
from training.loading import load_model
from training.runfiles import EXPORT, REPORT, read_report, write_report

# The smoke recipe's two epochs at 64 px leave a run anywhere from below chance to 47% on fresh drawings (three
# sessions, 2026-12-02), too weak to be clearly better than anything. Six epochs at the drawings' 96 px: 82% on the
# 900 fresh ones, in 2 minutes on the 2-core AVX-512 bf16 AMD EPYC with other jobs running.
BETTER_RECIPE = """description = "tests: clearly better than chance on the drawings"
valid_pct = 0.25
seed = 7
[[stages]]
name = "frozen-96"
backbone = "efficientnet_lite0"
size = 96
bs = 16
frozen = true
train_bn = false
epochs = 1
lr = 3e-3
[[stages]]
name = "unfrozen-96"
backbone = "efficientnet_lite0"
size = 96
bs = 16
frozen = false
epochs = 5
lr = [1e-4, 3e-3]
"""


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
