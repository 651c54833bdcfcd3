"""Run a recipe stage by stage, checkpointing each stage, and export the learner with its report."""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import minimum, steep, valley  # noqa: F401  (patches Learner.lr_find)
from fastai.interpret import ClassificationInterpretation
from fastai.torch_core import noop, num_distrib, rank_distrib

from .backbones import get_backbone
from .budget import plan_epochs, probe_epoch
from .calibration import bake_temperature, expected_calibration_error, fit_temperature, unsure_threshold
from .dataset import DatasetScan, check_trainable, scan_dataset, split_items
from .distributed import data_parallel, rank0_choice, this_process_only
from .fsutil import atomic_path, sha256_file, write_json
from .learner import CPUAutocast, build_learner, build_model, make_dataloaders, make_loss, set_trainable
from .metrics import classification_metrics, plot_confusion_matrix
from .mistakes import mistake_rows, write_mistakes_csv
from .recipes import Recipe

STATE_FILE = "state.json"
SPLIT_FILE = "split.json"


class RunError(RuntimeError):
    """A training run that cannot start or continue, with the reason."""


@dataclass
class TrainOptions:
    """How to run a recipe, beyond the recipe itself."""

    device: str = "auto"          # auto, cpu or cuda
    precision: str = "auto"       # auto, fp32 or bf16 (auto: bf16 where the hardware does it fast)
    pretrained: bool = True
    resume: bool = False
    progress: bool = True


def pick_device(name: str) -> torch.device:
    """`auto` means CUDA when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for, but no CUDA device is available")
    if name == "cuda" and num_distrib() > 1:  # one device per process under `accelerate launch`
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank_distrib())))
    if name not in ("cpu", "cuda"):
        raise RunError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def loader_workers(device: torch.device) -> int:
    """Background decoding keeps a GPU busy; on CPU the model already uses every core, so decode in-process."""
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix units (AVX512-BF16 / AMX), where autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# The dtype that each (device, precision) pair trains under (autocast); absent pairs train in fp32.
AUTOCAST_DTYPES = {("cpu", "bf16"): torch.bfloat16, ("cuda", "bf16"): torch.bfloat16, ("cuda", "fp16"): torch.float16}


def training_memory_format(device: torch.device, precision: str) -> torch.memory_format:
    """NHWC for tensor cores and for oneDNN's bf16 kernels, where it measured faster; NCHW otherwise."""
    # bf16 on a 2-core AMD EPYC: Lite2 training step 1.1-1.2x and validation forward 1.5x faster in NHWC;
    # on the AMX machine it measured even (docs/experiments.md). fp32 on CPU keeps NCHW, as before.
    fast = device.type == "cuda" or precision == "bf16"
    return torch.channels_last if fast else torch.contiguous_format


def pick_precision(name: str, device: torch.device) -> str:
    """Resolve `auto` to bf16 or fp16 on CUDA, bf16 on capable CPUs, else fp32."""
    if name not in ("auto", "fp32", "bf16"):
        raise RunError(f"unknown precision {name!r}; use auto, fp32 or bf16")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


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


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the result."""
    names = ["torch", "torchvision", "fastai", "timm", "pillow", "numpy"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _split_frame(scan: DatasetScan, recipe: Recipe, out: Path, resume: bool, write: bool = True) -> pd.DataFrame:
    """The run's train/valid split: made once, saved with the run and reused by every stage and on resume."""
    split_path = out / SPLIT_FILE
    if resume and split_path.exists():
        rows = json.loads(split_path.read_text())["items"]
        known = {item.relpath for item in scan.items}
        missing = [r["path"] for r in rows if r["path"] not in known]
        if missing:
            raise RunError(f"cannot resume: {len(missing)} images of the saved split are gone (e.g. {missing[0]})")
    else:
        is_valid = split_items(scan.items, recipe.valid_pct, recipe.seed)
        rows = [{"path": i.relpath, "label": i.label, "is_valid": v} for i, v in zip(scan.items, is_valid)]
        if write:  # every rank computes the same split from the seed; one of them saves it
            write_json(split_path, {"seed": recipe.seed, "valid_pct": recipe.valid_pct, "items": rows})
    frame = pd.DataFrame(rows)
    frame["path"] = [str(scan.root / p) for p in frame["path"]]
    return frame


def _load_state(out: Path, recipe: Recipe, scan: DatasetScan, options: TrainOptions) -> dict:
    state_path = out / STATE_FILE
    fresh = {
        "recipe": recipe.to_dict(),
        "dataset_fingerprint": scan.fingerprint(),
        "pretrained": options.pretrained,
        "completed": [],
        "exported": False,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if not state_path.exists():
        return fresh
    state = json.loads(state_path.read_text())
    if not options.resume:
        done = len(state.get("completed", []))
        raise RunError(
            f"{out} already holds a run ({done} of {len(state['recipe']['stages'])} stages done); "
            f"pass --resume to continue it, or choose another --out"
        )
    if state["recipe"] != json.loads(json.dumps(recipe.to_dict())):  # compare as JSON: tuples became lists
        raise RunError(f"cannot resume: the recipe differs from the one {out} was started with")
    if state["dataset_fingerprint"] != scan.fingerprint():
        raise RunError(f"cannot resume: the data folder changed since {out} was started")
    if state["pretrained"] != options.pretrained:
        raise RunError("cannot resume: --pretrained/--no-pretrained differs from the original run")
    # Epochs of a stage that a killed process did not finish: redone now, but their time counts for the budget.
    running = state.pop("running", None)
    if running:
        state["lost_seconds"] = state.get("lost_seconds", 0.0) + running["seconds"]
    return state


def _save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def _lr_find(learn, out: Path, stage_name: str, cbs) -> float:
    """Run fastai's lr_find, save its plot, and return the suggested (valley) learning rate."""
    import matplotlib.pyplot as plt

    learn.add_cbs(cbs)  # lr_find takes no cbs argument; run it under the same precision as the fit
    try:
        suggestion = learn.lr_find(suggest_funcs=(valley,), show_plot=True)
    finally:
        learn.remove_cbs(cbs)
    with atomic_path(out / f"lr_find-{stage_name}.png") as tmp:
        plt.gcf().savefig(tmp, format="png")
    plt.close("all")
    return float(suggestion.valley)


def train_recipe(data_dir: str | Path, recipe: Recipe, out: str | Path, options: TrainOptions | None = None,
                 echo: Callable[[str], None] = print) -> dict:
    """Train every stage of `recipe` on `data_dir`, write RUN_DIR files, and return the report."""
    started = time.monotonic()
    options = options or TrainOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Under `accelerate launch` every rank trains; only rank 0 prints and writes files.
    is_main, distributed = rank_distrib() == 0, num_distrib() > 1
    if not is_main:
        echo = noop
    device = pick_device(options.device)
    precision = pick_precision(options.precision, device)
    autocast_dtype = AUTOCAST_DTYPES.get((device.type, precision))

    scan = scan_dataset(data_dir, progress=options.progress)
    check_trainable(scan)
    state = _load_state(out, recipe, scan, options)
    if state["exported"] and (out / "export.pkl").exists():
        echo(f"{out} is already complete; nothing to do.")
        return json.loads((out / "report.json").read_text())
    if options.pretrained:  # fail before any work if a backbone's weights are missing
        for name in dict.fromkeys(s.backbone for s in recipe.stages):
            get_backbone(name).body(pretrained=True)
    frame = _split_frame(scan, recipe, out, options.resume, write=is_main)
    echo(f"{len(scan.items)} images, {len(scan.classes)} classes, "
         f"{int(frame.is_valid.sum())} for validation; device {device.type}, precision {precision}"
         + (f", {num_distrib()} processes" if distributed else ""))

    learn, backbone = None, None
    completed = state["completed"]
    # Time spent by earlier processes of a resumed run (every epoch they finished), for an elastic stage's budget.
    spent_before = _epoch_seconds(completed) + state.get("lost_seconds", 0.0)
    for index, stage in enumerate(recipe.stages):
        if index < len(completed):
            echo(f"stage {index + 1}/{len(recipe.stages)} {stage.name}: done earlier, skipped")
            continue
        dls = make_dataloaders(frame, scan.classes, stage.backbone, stage.size, stage.bs,
                               augment=stage.augment, seed=recipe.seed, device=device,
                               num_workers=loader_workers(device))
        if learn is not None and stage.backbone == backbone:
            learn.dls = dls  # progressive resizing: same weights, new image size
            learn.loss_func = make_loss(stage.label_smoothing)
        else:
            model = None
            previous = recipe.stages[index - 1] if index else None
            if previous is not None and previous.backbone == stage.backbone:
                # Resuming mid-backbone: rebuild the architecture and load the last completed stage's weights.
                model = build_model(stage.backbone, len(scan.classes), pretrained=False)
                checkpoint = out / "checkpoints" / f"stage-{index}.pth"
                model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
            learn = build_learner(dls, stage.backbone, options.pretrained, stage.label_smoothing, model=model)
            learn.model.to(device, memory_format=training_memory_format(device, precision))
            backbone = stage.backbone
        learn.path = out
        if not options.progress:
            learn.remove_cbs(ProgressCallback)
            learn.logger = noop  # EpochTable echoes a readable line per epoch instead of fastai's raw lists
        cbs = []
        if autocast_dtype is not None:
            cbs.append(CPUAutocast() if device.type == "cpu" else MixedPrecision(amp_mode=precision))
        set_trainable(learn, stage.frozen, stage.frozen_groups, stage.train_bn)

        record = {"stage": stage.name, "backbone": stage.backbone, "size": stage.size, "bs": stage.bs,
                  "frozen": stage.frozen, "frozen_groups": stage.frozen_groups, "train_bn": stage.train_bn,
                  "lr": stage.lr}
        if stage.lr == "find":
            record["lr_found"] = _lr_find(learn, out, stage.name, cbs)
            echo(f"  lr_find suggests {record['lr_found']:.2e}")
        epochs = stage.epochs
        if stage.elastic:
            probe = probe_epoch(learn, autocast_dtype)
            spent = spent_before + time.monotonic() - started
            plan = plan_epochs(recipe.budget_minutes * 60, spent, probe.seconds, *stage.epochs)
            epochs = rank0_choice(plan.epochs)
            record["budget"] = {**asdict(plan), "lost_seconds": state.get("lost_seconds", 0.0), "probe": asdict(probe)}
            echo(plan.describe())
        echo(f"stage {index + 1}/{len(recipe.stages)} {stage.name}: {stage.backbone} @{stage.size}px, "
             f"{'frozen' if stage.frozen else 'unfrozen'}, {epochs} epochs, lr {stage.lr}")
        table = EpochTable(None if options.progress else echo,
                           partial(_save_progress, out, state, stage.name) if is_main else None)
        with data_parallel(learn, device):
            learn.fit_one_cycle(epochs, stage.lr_for_fit(record.get("lr_found")), cbs=[*cbs, table])
        record["epochs"] = table.rows
        completed.append(record)
        state.pop("running", None)
        if is_main:
            _save_checkpoint(learn.model, out / "checkpoints" / f"stage-{index + 1}.pth")
            write_json(out / STATE_FILE, state)

    if not is_main:
        return {}

    if learn is None:  # every stage was done before a crash during export: rebuild the final model
        learn = _rebuild_final(recipe, scan, frame, out, device)
    learn.model.to(memory_format=torch.contiguous_format)  # exported as every runtime and the web app expect it
    with this_process_only():
        return _finish(learn, recipe, scan, state, out, options, precision, echo)


def _save_progress(out: Path, state: dict, stage_name: str, rows: list[dict]) -> None:
    """Note the running stage's finished epochs in the run state (a resumed run counts them as spent)."""
    state["running"] = {"stage": stage_name, "seconds": _epoch_seconds([{"epochs": rows}])}
    write_json(out / STATE_FILE, state)


def _epoch_seconds(completed: list[dict]) -> float:
    """Seconds spent in the epochs of the completed stages (validation included)."""
    return sum(row["seconds"] for stage in completed for row in stage["epochs"])


def _rebuild_final(recipe: Recipe, scan: DatasetScan, frame: pd.DataFrame, out: Path, device):
    last = recipe.stages[-1]
    dls = make_dataloaders(frame, scan.classes, last.backbone, last.size, last.bs, last.augment, recipe.seed,
                           device=device)
    model = build_model(last.backbone, len(scan.classes), pretrained=False)
    checkpoint = out / "checkpoints" / f"stage-{len(recipe.stages)}.pth"
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return build_learner(dls, last.backbone, pretrained=False, model=model.to(device))


def _finish(learn, recipe: Recipe, scan: DatasetScan, state: dict, out: Path, options: TrainOptions,
            precision: str, echo) -> dict:
    """Score the validation set, export the learner atomically, and write the report and plots."""
    last = recipe.stages[-1]
    spec = get_backbone(last.backbone)
    logits, targets, losses = learn.get_preds(dl=learn.dls.valid, act=noop, with_loss=True)
    calibration, probs = _calibrate(learn, logits, targets)
    metrics = classification_metrics(probs, targets.numpy(), scan.classes)
    _plot_top_losses(learn, losses, out / "top_losses.png")
    valid_files = [str(Path(f).relative_to(scan.root)) for f in learn.dls.valid_ds.items]
    write_mistakes_csv(mistake_rows(valid_files, probs, targets.numpy(), scan.classes), out / "mistakes.csv")
    trained = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    learn.meta = {
        "classes": list(scan.classes),
        "backbone": last.backbone,
        "size": last.size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "recipe": recipe.name,
        "trained_at": trained,
        "temperature": calibration["temperature"],
    }
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, (MixedPrecision, CPUAutocast))])
    with atomic_path(out / "export.pkl") as tmp:
        learn.export(tmp)
    model_sha = sha256_file(out / "export.pkl")
    plot_confusion_matrix(metrics["confusion_matrix"], scan.classes, out / "confusion_matrix.png")

    seconds = _epoch_seconds(state["completed"])
    report = {
        "classes": scan.classes,
        "backbone": last.backbone,
        "size": last.size,
        "recipe": recipe.to_dict(),
        "weights": "ImageNet (" + ", ".join(
            dict.fromkeys(get_backbone(s.backbone).weights_source for s in recipe.stages)) + ")"
        if options.pretrained else "random initialisation (--no-pretrained)",
        "split_seed": recipe.seed,
        "dataset": {"root": str(scan.root), "fingerprint": scan.fingerprint(), "images": len(scan.items),
                    "train_images": len(learn.dls.train_ds), "valid_images": len(learn.dls.valid_ds),
                    "unreadable": len(scan.unreadable), "counts": scan.counts()},
        "stages": state["completed"],
        "validation": metrics,
        "calibration": calibration,
        "unsure_below": calibration["unsure_below"],
        "training_seconds": round(seconds, 1),
        "precision": precision,
        "device": str(learn.dls.device),
        "cuda_max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "trained_at": trained,
        "packages": package_versions(),
        "model_sha256": model_sha,
    }
    write_json(out / "report.json", report)
    state["exported"] = True
    write_json(out / STATE_FILE, state)
    echo(summary_text(report))
    return report


def _calibrate(learn, logits: torch.Tensor, targets: torch.Tensor) -> tuple[dict, np.ndarray]:
    """Fit a temperature on the validation logits, bake it into the model; the figures and calibrated probabilities."""
    temperature = fit_temperature(logits, targets)
    before = torch.softmax(logits, dim=1).numpy()
    after = torch.softmax(logits / temperature, dim=1).numpy()
    bake_temperature(learn.model, temperature)
    figures = {
        "temperature": round(temperature, 4),
        "ece_before": round(expected_calibration_error(before, targets.numpy()), 4),
        "ece_after": round(expected_calibration_error(after, targets.numpy()), 4),
        # Fitted and measured on the validation split itself: one parameter, so the optimism is small.
        "unsure_below": round(unsure_threshold(after, targets.numpy()), 4),
    }
    return figures, after


def _plot_top_losses(learn, losses: torch.Tensor, path: Path, k: int = 12) -> None:
    """fastai's grid of the validation photos with the highest loss, so a person can spot wrong labels."""
    import matplotlib.pyplot as plt

    interp = ClassificationInterpretation(learn, learn.dls.valid, losses)
    interp.plot_top_losses(min(k, len(losses)), nrows=3, figsize=(12, 10))
    with atomic_path(path) as tmp:
        plt.gcf().savefig(tmp, format="png", dpi=80)
    plt.close("all")


def summary_text(report: dict) -> str:
    """A one-screen summary of a finished run."""
    lines = [f"Recipe {report['recipe']['name']}: {report['backbone']} @{report['size']}px, "
             f"{len(report['classes'])} classes, {report['training_seconds'] / 60:.1f} min of training"]
    lines.append(f"{'stage':<28}{'epoch':>6}{'train_loss':>12}{'valid_loss':>12}{'accuracy':>10}{'seconds':>9}")
    for stage in report["stages"]:
        for row in stage["epochs"]:
            lines.append(f"{stage['stage']:<28}{row['epoch']:>6}{row['train_loss']:>12.4f}"
                         f"{row['valid_loss']:>12.4f}{row['accuracy']:>10.4f}{row['seconds']:>9.1f}")
    val = report["validation"]
    lines.append(f"Validation: accuracy {val['accuracy']:.4f}, macro-F1 {val['macro_f1']:.4f} on {val['n']} images")
    cal = report["calibration"]
    lines.append(f"Calibration: temperature {cal['temperature']:.2f}, ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}; "
                 f"'not sure' below {cal['unsure_below']:.2f}")
    if val["most_confused"]:
        pairs = ", ".join(f"{p['actual']} -> {p['predicted']} ({p['count']})" for p in val["most_confused"][:5])
        lines.append(f"Most confused: {pairs}")
    return "\n".join(lines)
