"""What a finished run reports: provenance, the per-epoch table, validation figures; and its one-screen summary."""
from __future__ import annotations

import platform
from importlib import metadata

import torch

from .backbones import get_backbone
from .runfiles import Report
from .runstate import Run

REPORTED_PACKAGES = ("torch", "torchvision", "fastai", "timm", "pillow", "numpy")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the result."""
    versions = {"python": platform.python_version()}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def weights_used(run: Run) -> str:
    """Where the starting weights came from, for the report and the model page."""
    if not run.pretrained:
        return "random initialisation (--no-pretrained)"
    sources = dict.fromkeys(get_backbone(s.backbone).weights_source for s in run.recipe.stages)
    return "ImageNet (" + ", ".join(sources) + ")"


def build_report(run: Run, learn, metrics: dict, calibration: dict, trained_at: str, model_sha: str) -> Report:
    """The report of a finished run (written as report.json)."""
    last = run.recipe.stages[-1]
    scan = run.scan
    return Report(
        classes=scan.classes,
        names=scan.names,
        backbone=last.backbone,
        size=last.size,
        recipe=run.recipe.to_dict(),
        weights=weights_used(run),
        split_seed=run.recipe.seed,
        dataset={"root": str(scan.root), "fingerprint": scan.fingerprint(), "images": len(scan.items),
                 "train_images": len(learn.dls.train_ds), "valid_images": len(learn.dls.valid_ds),
                 "unreadable": len(scan.unreadable), "counts": scan.counts(),
                 "decisions": scan.decisions.as_dict() if scan.decisions else None},
        stages=[record.to_json() for record in run.completed],
        validation=metrics,
        calibration=calibration,
        unsure_below=calibration["unsure_below"],
        training_seconds=round(run.state.epoch_seconds, 1),
        precision=run.precision,
        device=str(learn.dls.device),
        cuda_max_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        trained_at=trained_at,
        packages=package_versions(),
        model_sha256=model_sha,
    )


def summary_text(report: Report) -> str:
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
        names = report.get("names") or {}
        pairs = ", ".join(f"{names.get(p['actual'], p['actual'])} -> {names.get(p['predicted'], p['predicted'])} "
                          f"({p['count']})" for p in val["most_confused"][:5])
        lines.append(f"Most confused: {pairs}")
    return "\n".join(lines)
