"""The end of a run: score the validation set, calibrate, export the learner, and write the report and plots."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch
from fastai.callback.fp16 import MixedPrecision
from fastai.interpret import ClassificationInterpretation
from fastai.torch_core import noop

from .backbones import get_backbone
from .calibration import bake_temperature, expected_calibration_error, fit_temperature, unsure_threshold
from .fsutil import atomic_path, sha256_file
from .groups import fit_group_line, group_figures
from .learner import CPUAutocast, LabelOf
from .metrics import classification_metrics, plot_confusion_matrix
from .mistakes import mistake_rows, write_mistakes_csv
from .openset import (
    IMAGENET_CLASSES,
    ImageNetCheck,
    ScopeDetector,
    closeup_features,
    feature_forward,
    fit_scope,
    image_features,
    imagenet_names,
)
from .report import build_report, summary_text
from .runfiles import CONFUSION_MATRIX_PNG, EXPORT, MISTAKES_CSV, TOP_LOSSES_PNG, ModelMeta, write_report
from .runstate import Run, RunError, save_state

TOP_LOSSES = 12  # photos in the top-losses grid
TOP_LOSSES_FIGSIZE, TOP_LOSSES_DPI = (12, 10), 80


def finish_run(learn, run: Run) -> dict:
    """Score the validation set, export the learner atomically, and write the report and plots; the report."""
    started = run.clock()
    logits, targets, losses = learn.get_preds(dl=learn.dls.valid, act=noop, with_loss=True)
    refuse_non_finite(learn.model, logits)
    calibration, probs = calibrate(learn, logits, targets)  # a temperature in TEMPERATURE_RANGE keeps them finite
    groups = fit_groups(probs, targets.numpy(), run, calibration["unsure_below"])
    metrics = classification_metrics(probs, targets.numpy(), run.scan.classes)
    plot_top_losses(learn, losses, run.out / TOP_LOSSES_PNG)
    valid_files = [str(Path(f).relative_to(run.scan.root)) for f in learn.dls.valid_ds.items]
    write_mistakes_csv(mistake_rows(valid_files, probs, targets.numpy(), run.scan.classes), run.out / MISTAKES_CSV)
    detector, scope = fit_scope_detector(learn, run)
    trained_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    model_sha = export_learner(learn, run, calibration, trained_at, detector, groups["line"])
    plot_confusion_matrix(metrics["confusion_matrix"], [run.scan.names[c] for c in run.scan.classes],
                          run.out / CONFUSION_MATRIX_PNG)
    report = build_report(run, learn, metrics, calibration, trained_at, model_sha)
    plan = budget_summary(run, run.clock() - started)
    report = write_report(run.out, {**report, "scope": scope, **({"groups": groups} if run.scan.groups else {}),
                                    **({"plan": plan} if plan else {})})
    run.state.mark_exported()
    save_state(run)
    run.echo(summary_text(report))
    return report


def budget_summary(run: Run, finish_seconds: float) -> dict | None:
    """For a budgeted run: the plan made before its first stage, what the plans dropped, and the end's real cost
    against the reserve kept for it (so the reserve can be checked on every machine)."""
    plans = [record.budget["plan"] for record in run.completed if record.budget and "plan" in record.budget]
    if not plans:
        return None
    return {"first": plans[0], "dropped": [r.stage for r in run.completed if not r.epochs],
            "reserve_seconds": plans[-1]["reserve_seconds"], "finish_seconds": round(finish_seconds, 1)}


def refuse_non_finite(model: torch.nn.Module, logits: torch.Tensor) -> None:
    """Raise a RunError, before anything is exported, if the model or its validation logits hold NaN or infinity."""
    tensors = dict(model.named_parameters()) | dict(model.named_buffers()) | {"validation logits": logits}
    bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise RunError(f"training diverged: {', '.join(bad[:3])} hold NaN or infinity, so nothing was exported; "
                       "try the recipe with a lower learning rate")


def fit_scope_detector(learn, run: Run) -> tuple[ScopeDetector, dict]:
    """The "not one of my classes" detector, fitted on the training photos' features; it and its figures."""
    last = run.recipe.stages[-1]
    spec = get_backbone(last.backbone)
    n_classes = len(run.scan.classes)
    # One pass gives the model's features and the ImageNet check's logits: [logits | features | ImageNet logits].
    # The threshold is drawn from the validation photos' scores, and serving decides every photo near it in fp32,
    # so those scores are fp32 too; bf16 is close enough for fitting the class means and covariance.
    check = ImageNetCheck(spec.mean, spec.std)
    features, imagenet = {}, {}
    for name, dataset in (("train", learn.dls.train_ds), ("valid", learn.dls.valid_ds)):
        forward = feature_forward(learn.model, last.size, n_classes, run.device, check=check, exact=name == "valid")
        paths = [str(p) for p in dataset.items]
        _, both = image_features(forward, paths, last.size, spec.mean, spec.std, n_classes, run.progress)
        if name == "train":  # and a close-up of each, so a headstock of a known model stays in scope
            closeups = closeup_features(forward, paths, last.size, spec.mean, spec.std, run.progress)[:, n_classes:]
            both = np.concatenate([both, closeups]) if len(closeups) else both
        features[name], imagenet[name] = both[:, :-IMAGENET_CLASSES], both[:, -IMAGENET_CLASSES:]
    # The training photos' own labels (folder or relabel, as the DataLoaders read them), not the model's answers.
    label_of = LabelOf.from_frame(run.frame)
    labels = [run.scan.classes.index(label_of(p)) for p in learn.dls.train_ds.items]
    # Mahalanobis++ over the photos and their close-ups: docs/experiments.md, "Scope detectors side by side".
    # and the check's sure reading of something else: docs/experiments.md, "The check's reading".
    names = imagenet_names()
    kin = tuple(names.index(r) for r in run.scan.kind.imagenet) if run.scan.kind else ()
    detector = fit_scope(features["train"], labels * 2, features["valid"], train_imagenet=imagenet["train"],
                         valid_imagenet=imagenet["valid"], normalise=True, reading=True, kin=kin)
    valid_scores = detector.scores(features["valid"], imagenet=imagenet["valid"])
    rejected = float((~detector.in_scope(valid_scores)).mean())
    vetoed = float(detector.sure_of_other(imagenet["valid"]).mean()) if detector.reads_imagenet else 0.0
    figures = {"method": detector.method, "threshold": round(detector.threshold, 6), "keep": detector.keep,
               "train_photos": len(labels), "train_closeups": len(labels), "valid_rejected": round(rejected, 4),
               "sure_line": detector.sure_line, "valid_read_as_other": round(vetoed, 4),
               "kin": [names[c] for c in detector.kin]}
    run.echo(f"Scope: Mahalanobis++ over {len(labels)} training photos and a close-up of each, plus the ImageNet "
             f"check; threshold {detector.threshold:.4f} keeps {1 - rejected:.1%} of the validation photos "
             f"({vetoed:.1%} turned away by the check's sure reading of something else, from {detector.sure_line})")
    return detector, figures


def fit_groups(probs: np.ndarray, targets: np.ndarray, run: Run, unsure_below: float) -> dict:
    """The group line fitted on the validation split, and the group figures it gives there."""
    classes, groups = run.scan.classes, run.scan.groups
    line = fit_group_line(probs, targets, groups, classes, unsure_below) if groups else None
    figures = group_figures(probs, targets, groups, classes, unsure_below, line) if groups else {"line": None}
    if groups:
        run.echo(f"Groups: {', '.join(g.name for g in groups)}; the group is right on {figures['accuracy']:.1%} of "
                 f"the validation photos, and answers {figures['coverage'] or 0:.1%} of the {figures['unsure']} "
                 "not-sure ones as sure")
    return figures


def export_learner(learn, run: Run, calibration: dict, trained_at: str, detector: ScopeDetector | None = None,
                   group_line: float | None = None) -> str:
    """`learn.export` to the run's export.pkl with the model metadata (everything an answer depends on: the
    temperature and "not sure" line of `calibration` too), atomically; the file's SHA-256."""
    last = run.recipe.stages[-1]
    spec = get_backbone(last.backbone)
    learn.meta = ModelMeta(classes=list(run.scan.classes), backbone=last.backbone, size=last.size,
                           mean=list(spec.mean), std=list(spec.std), recipe=run.recipe.name, trained_at=trained_at,
                           temperature=calibration["temperature"], scope=detector.to_meta() if detector else None,
                           names=dict(run.scan.names), unsure_below=calibration["unsure_below"],
                           groups=[g.to_meta() for g in run.scan.groups], group_unsure_below=group_line,
                           kind=run.scan.kind.to_meta() if run.scan.kind else None)
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, (MixedPrecision, CPUAutocast))])
    with atomic_path(run.out / EXPORT) as tmp:
        learn.export(tmp)
    return sha256_file(run.out / EXPORT)


def calibrate(learn, logits: torch.Tensor, targets: torch.Tensor) -> tuple[dict, np.ndarray]:
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
    # The share of validation photos shown as "not sure": what live traffic is held against (webapp/monitor.py).
    figures["unsure_share"] = round(float((after.max(axis=1) < figures["unsure_below"]).mean()), 4)
    return figures, after


def plot_top_losses(learn, losses: torch.Tensor, path: Path) -> None:
    """fastai's grid of the validation photos with the highest loss, so a person can spot wrong labels."""
    import matplotlib.pyplot as plt

    interp = ClassificationInterpretation(learn, learn.dls.valid, losses)
    interp.plot_top_losses(min(TOP_LOSSES, len(losses)), nrows=3, figsize=TOP_LOSSES_FIGSIZE)
    with atomic_path(path) as tmp:
        plt.gcf().savefig(tmp, format="png", dpi=TOP_LOSSES_DPI)
    plt.close("all")
