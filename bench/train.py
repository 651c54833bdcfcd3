"""Training benchmark: our `cpu`-recipe pipeline vs fastai's default pipeline, same backbone, sizes, split and epochs.

Ours is built by the function a run builds its stages' loaders with (close-ups, rotation, zoom and the rest of the
recipe's augmentation), in the precision and memory layout `--precision auto` trains in on this CPU.

Usage: .venv/bin/python -m bench.train [--data ../shared/data/guitars] [--per-class 60] [--recipe cpu] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import IndexSplitter, Normalize, parent_label
from fastai.torch_core import noop
from fastai.vision.augment import Resize, aug_transforms
from fastai.vision.data import ImageBlock

from training.backbones import get_backbone
from training.dataset import scan_dataset, split_items
from training.devices import cpu_class, pick_precision, training_memory_format
from training.learner import CPUAutocast, build_learner, set_trainable
from training.recipes import load_recipe
from training.stage import recipe_dataloaders

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "guitars"


class TrainTimer(Callback):
    """Seconds spent in the training phase of each epoch (validation excluded)."""

    def __init__(self):
        self.seconds = []

    def before_train(self):
        self.started = time.perf_counter()

    def after_train(self):
        self.seconds.append(time.perf_counter() - self.started)


def subset_frame(data: Path, per_class: int, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """The first `per_class` photos of each class, split duplicate-aware as training does."""
    scan = scan_dataset(data)
    counts: dict[str, int] = {}
    items = []
    for item in scan.items:
        if counts.get(item.label, 0) < per_class:
            counts[item.label] = counts.get(item.label, 0) + 1
            items.append(item)
    is_valid = split_items(items, 0.2, seed)
    frame = pd.DataFrame({"path": [str(scan.root / i.relpath) for i in items], "label": [i.label for i in items],
                          "is_valid": is_valid})
    return frame, scan.classes


def fastai_default_dls(frame: pd.DataFrame, classes, backbone: str, size: int, bs: int):
    """What `ImageDataLoaders.from_folder(..., item_tfms=Resize(size), batch_tfms=aug_transforms())` builds."""
    spec = get_backbone(backbone)
    block = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=classes)), get_y=parent_label,
                      splitter=IndexSplitter(frame.index[frame.is_valid].to_numpy()),
                      item_tfms=Resize(size), batch_tfms=[*aug_transforms(), Normalize.from_stats(spec.mean, spec.std)])
    return block.dataloaders([Path(p) for p in frame.path], bs=bs, num_workers=0)


def ours_dataloaders(frame: pd.DataFrame, classes, stage, seed: int):
    """Our pipeline at one stage: the loaders a run of the recipe builds for it, on the CPU."""
    return recipe_dataloaders(frame, classes, stage, seed, torch.device("cpu"))


def run(name: str, make_dls, backbone: str, stages, precision: str, recipe_freezing: bool) -> dict:
    """One epoch per stage from the same ImageNet start; training images/s and validation accuracy.

    `make_dls(stage)` builds the pipeline's loaders for a stage. `recipe_freezing`: freeze as the recipe says
    (frozen groups, `train_bn`) and train in the recipe's memory layout; else what fastai's freeze()/unfreeze() do.
    """
    torch.manual_seed(0)
    learn = None
    timer = TrainTimer()
    cbs = [timer, *([CPUAutocast()] if precision == "bf16" else [])]
    rows = []
    for stage in stages:
        dls = make_dls(stage)
        if learn is None:
            learn = build_learner(dls, backbone, pretrained=True)
            learn.logger = noop  # no per-epoch lists on stdout; we print one summary line
            if recipe_freezing:
                learn.model.to(memory_format=training_memory_format(torch.device("cpu"), precision))
        learn.dls = dls
        if recipe_freezing:
            set_trainable(learn, stage.frozen, stage.frozen_groups, stage.train_bn)
        else:
            set_trainable(learn, stage.frozen)
        with learn.no_bar():
            learn.fit_one_cycle(1, stage.lr_for_fit(), cbs=cbs)
        rows.append({"stage": stage.name, "size": stage.size, "images_per_s": len(dls.train_ds) / timer.seconds[-1],
                     "accuracy": float(learn.recorder.values[-1][-1])})
    print(f"{name} ({precision}): " + "; ".join(
        f"{r['stage']} {r['images_per_s']:.1f} img/s, valid accuracy {r['accuracy']:.4f}" for r in rows), flush=True)
    return {"stages": rows, "train_images": len(dls.train_ds), "valid_images": len(dls.valid_ds), "precision": precision}


def benchmark_stages(recipe):
    """The first (frozen) stage, and the unfrozen stage where the recipe spends most of its time."""
    unfrozen = [s for s in recipe.stages if not s.frozen]
    costliest = max(unfrozen, key=lambda s: s.size ** 2 * s.max_epochs)
    return [recipe.stages[0], costliest]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REAL if REAL.is_dir() else ROOT / "demo_data")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--recipe", default="cpu", help="the recipe whose pipeline is ours (smoke: a few seconds)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    stages = benchmark_stages(recipe)
    backbone = stages[0].backbone
    frame, classes = subset_frame(args.data, args.per_class, recipe.seed)
    precision = pick_precision("auto", torch.device("cpu"))  # what `flask train` picks here: bf16 only with native bf16
    results = {"data": str(args.data), "per_class": args.per_class, "recipe": recipe.name, "backbone": backbone,
               "sizes": [s.size for s in stages], "threads": torch.get_num_threads(), "cpu_class": cpu_class()}
    results["ours"] = run(f"ours ({recipe.name} recipe pipeline)",
                          lambda stage: ours_dataloaders(frame, classes, stage, recipe.seed),
                          backbone, stages, precision, recipe_freezing=True)
    results["baseline"] = run("fastai default",
                              lambda stage: fastai_default_dls(frame, classes, backbone, stage.size, stage.bs),
                              backbone, stages, "fp32", recipe_freezing=False)
    results["speedup"] = [o["images_per_s"] / b["images_per_s"]
                          for o, b in zip(results["ours"]["stages"], results["baseline"]["stages"])]
    print("speed-up ours/baseline: " + ", ".join(f"{s:.2f}x" for s in results["speedup"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
