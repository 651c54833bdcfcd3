"""Score an exported model on a labelled folder with the same layout as the training data."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .batches import Unreadable, image_batches
from .dataset import DatasetError, labelled_images
from .groups import group_figures
from .inference import Predictor
from .labels import decisions_line
from .metrics import classification_metrics
from .mistakes import mistake_rows
from .predict_files import expand_paths
from .views import VIEWS, view_crops


@dataclass(frozen=True)
class Evaluation:
    """A model scored on a labelled folder, and on views cut from it and photos of none of its classes when asked."""

    metrics: dict  # training.metrics.classification_metrics: accuracy, macro-F1, per class, confusion matrix
    classes: list[str]
    names: dict[str, str]
    tta: str
    unknown_classes: dict[str, int]  # folders the model does not know, with their photo counts
    unreadable: list[Unreadable]
    decisions: dict  # what DATA/labels.csv changed
    mistakes: list[dict]
    scope: dict | None = None  # threshold and share rejected; None for a model without a detector
    scope_scores: list[float] = field(default_factory=list, repr=False)  # per photo, for the AUROC; not printed
    views: dict | None = None  # evaluate_views
    out_of_scope: dict | None = None  # evaluate_out_of_scope, by sub-folder
    groups: dict | None = None  # training.groups.group_figures; None for a model without groups

    def to_json(self) -> dict:
        """What `flask evaluate --json` prints."""
        result = {**self.metrics, "classes": self.classes, "names": self.names, "tta": self.tta,
                  "unknown_classes": self.unknown_classes, "unreadable": [u.to_json() for u in self.unreadable],
                  "decisions": self.decisions, "mistakes": self.mistakes}
        optional = {"scope": self.scope, "views": self.views, "out_of_scope": self.out_of_scope,
                    "groups": self.groups}
        return {**result, **{key: value for key, value in optional.items() if value is not None}}


def evaluate_folder(predictor: Predictor, data_dir: str | Path, batch_size: int = 32, progress: bool = True,
                    only: set[str] | None = None, views: bool = False, ood_dir: str | Path | None = None) -> Evaluation:
    """Accuracy, macro-F1, per-class scores, confusion matrix and the mistakes; unknown and unreadable files listed.

    `only`: score just these photos (paths relative to `data_dir`), such as a run's validation split. `views`: also
    score views cut from them (`evaluate_views`). `ood_dir`: also photos of none of the classes
    (`evaluate_out_of_scope`).
    """
    root = Path(data_dir)
    _, files, applied = labelled_images(root)  # the data owner's relabels and exclusions count here too
    if only is not None:
        files = [(relpath, label) for relpath, label in files if relpath in only]
    known = {name: k for k, name in enumerate(predictor.classes)}
    unknown: dict[str, int] = {}
    for _, label in files:
        if label not in known:
            unknown[label] = unknown.get(label, 0) + 1
    files = [(relpath, label) for relpath, label in files if label in known]
    unreadable: list[Unreadable] = []
    indices, probs, scope_scores = score_files(predictor, [root / relpath for relpath, _ in files], batch_size,
                                               unreadable, root, progress, "Evaluating")
    if not indices:
        raise DatasetError(
            f"no images of the model's classes in {root}; the model knows: {', '.join(predictor.classes)}"
        )
    scored = [files[i][0] for i in indices]
    targets = np.array([known[files[i][1]] for i in indices])
    scope, in_scope_scores = None, []
    if predictor.scope is not None:
        in_scope_scores = [float(x) for x in scope_scores]
        in_scope = predictor.scope.in_scope(np.array(in_scope_scores))
        scope = {"threshold": predictor.scope.threshold, "rejected": round(float((~in_scope).mean()), 4)}
    return Evaluation(
        metrics=classification_metrics(probs, targets, predictor.classes), classes=predictor.classes,
        names=predictor.names, tta=predictor.describe()["tta"], unknown_classes=unknown, unreadable=unreadable,
        decisions=applied.as_dict(), mistakes=mistake_rows(scored, probs, targets, predictor.classes), scope=scope,
        scope_scores=in_scope_scores,
        views=evaluate_views(predictor, root, only, batch_size, progress) if views else None,
        out_of_scope=(evaluate_out_of_scope(predictor, ood_dir, in_scope_scores, batch_size, progress)
                      if ood_dir else None),
        groups=model_group_figures(predictor, probs, targets),
    )


def model_group_figures(predictor: Predictor, probabilities: np.ndarray, targets: np.ndarray) -> dict | None:
    """`group_figures` with the model's own groups and lines (None for a model without groups)."""
    if not predictor.groups:
        return None
    return group_figures(probabilities, targets, predictor.groups, predictor.classes, predictor.unsure_below,
                         predictor.group_unsure_below)


def score_files(predictor: Predictor, paths: list[Path], batch_size: int, unreadable: list[Unreadable],
                root: Path | None = None, progress: bool = False,
                desc: str | None = None) -> tuple[list[int], np.ndarray, list]:
    """The readable files' indices in `paths`, their class probabilities (N, C) and scope scores (None each without
    a detector); the unreadable ones noted in `unreadable`."""
    indices, probs, scope_scores = [], [], []
    for batch_indices, images in image_batches(paths, batch_size, unreadable, root, progress, desc):
        batch_probs, batch_scores = predictor.outputs(images)
        indices.extend(batch_indices)
        probs.append(batch_probs)
        scope_scores.extend(batch_scores)
    probs = np.concatenate(probs) if probs else np.zeros((0, len(predictor.classes)), dtype=np.float32)
    return indices, probs, scope_scores


def evaluate_out_of_scope(predictor: Predictor, ood_dir: str | Path, in_scope_scores: list[float],
                          batch_size: int = 32, progress: bool = True) -> dict:
    """For each sub-folder of `ood_dir` (all photos that are none of the classes): the share the detector rejects,
    and the AUROC of the scope score against `in_scope_scores` (photos of the classes)."""
    from sklearn.metrics import roc_auc_score

    if predictor.scope is None:
        raise DatasetError("this model has no scope detector: retrain it with this version to get one")
    root = Path(ood_dir)
    groups = sorted(p for p in root.iterdir() if p.is_dir()) or [root]
    report = {}
    for group in groups:
        answers = [answer for _, images in image_batches(expand_paths([group]), batch_size, [], None, progress,
                                                         f"Out of scope: {group.name}")
                   for answer in predictor.predict(images)]
        if not answers:
            continue
        scores = np.array([a.scope_score for a in answers])
        labels = np.r_[np.ones(len(in_scope_scores)), np.zeros(len(scores))]
        report[group.name] = {"n": len(scores), "rejected": round(float(np.mean([not a.in_scope for a in answers])), 4),
                              # rejected and answered "a guitar, but not one of my models" (scope guitar-unknown)
                              "of_kind": round(float(np.mean([a.of_kind for a in answers])), 4),
                              "auroc": round(float(roc_auc_score(labels, np.r_[in_scope_scores, scores])), 4)}
    return report


def evaluate_views(predictor: Predictor, data_dir: str | Path, only: set[str] | None = None, batch_size: int = 32,
                   progress: bool = True) -> dict:
    """For each view cut from the labelled photos (training.views.VIEWS): how many, the accuracy, the shares shown
    as "not sure" and as out of scope, the accuracy of the answers given as sure and the confusions; the full shots
    also split into shots on white and photos in a setting."""
    root = Path(data_dir)
    _, files, _ = labelled_images(root)
    known = {name: k for k, name in enumerate(predictor.classes)}
    files = [(relpath, label) for relpath, label in files if label in known and (only is None or relpath in only)]
    scored = {view: ([], [], []) for view in VIEWS}  # probabilities, targets, scope scores
    on_white = []  # per full shot: whether it is a shot on white (it has part views), else a photo in a setting
    for indices, images in image_batches([root / relpath for relpath, _ in files], batch_size, [], progress=progress,
                                         desc="Views"):
        crops = [view_crops(img, index) for index, img in zip(indices, images)]
        on_white.extend("headstock" in found for found in crops if found)
        for view in VIEWS:
            picked = [(found[view], known[files[index][1]]) for index, found in zip(indices, crops) if view in found]
            if picked:
                probabilities, scope = predictor.outputs([crop for crop, _ in picked])
                scored[view][0].append(probabilities)
                scored[view][1].extend(target for _, target in picked)
                scored[view][2].extend(scope)
    report = {}
    for view in VIEWS:
        if not scored[view][0]:
            continue
        probabilities, targets = np.concatenate(scored[view][0]), np.array(scored[view][1])
        report[view] = view_scores(predictor, probabilities, targets, scored[view][2])
        if view == "full":  # product shots on white apart from photos in a setting, which are nearer to a phone's
            white, scope = np.array(on_white), np.array(scored[view][2], dtype=object)
            for name, mask in (("full on white", white), ("full in a setting", ~white)):
                if mask.any():
                    report[name] = view_scores(predictor, probabilities[mask], targets[mask], list(scope[mask]))
    return report


def view_scores(predictor: Predictor, probabilities: np.ndarray, targets: np.ndarray, scope_scores: list) -> dict:
    """Accuracy; shares "not sure" and out of scope; and the accuracy of the rest, the answers shown as sure."""
    right = probabilities.argmax(axis=1) == targets
    unsure = probabilities.max(axis=1) < predictor.unsure_below
    out = (np.zeros(len(targets), bool) if predictor.scope is None
           else ~predictor.scope.in_scope(np.array(scope_scores, dtype=float)))
    sure = ~unsure & ~out
    confused = classification_metrics(probabilities, targets, predictor.classes, top=5)
    groups = model_group_figures(predictor, probabilities, targets)
    return {"n": int(len(targets)), "accuracy": round(float(right.mean()), 4), "unsure": round(float(unsure.mean()), 4),
            "out_of_scope": round(float(out.mean()), 4),
            "sure_accuracy": round(float(right[sure].mean()), 4) if sure.any() else None,
            "most_confused": confused["most_confused"], "confusion_matrix": confused["confusion_matrix"],
            **({} if groups is None else {"group_accuracy": groups["accuracy"], "group_coverage": groups["coverage"],
                                          "group_sure_accuracy": groups["sure_accuracy"]})}


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def group_line_text(groups: dict) -> str:
    """One line on the group answer: its accuracy, and how many not-sure class answers it settles, how well."""
    return (f"Group right on {_share(groups['accuracy'])} of {groups['n']} photos; of the {groups['unsure']} not-sure "
            f"class answers, {_share(groups['coverage'])} get a sure group, right on {_share(groups['sure_accuracy'])}")


def evaluation_summary(evaluation: Evaluation) -> str:
    """A readable, one-screen summary of `evaluate_folder`'s result."""
    result = evaluation.to_json()
    lines = [f"Accuracy {result['accuracy']:.4f}   macro-F1 {result['macro_f1']:.4f}   on {result['n']} images", ""]
    names = result.get("names") or {}
    lines.append(f"{'class':<24}{'precision':>10}{'recall':>10}{'f1':>8}{'n':>6}")
    for class_id, row in result["per_class"].items():
        lines.append(f"{names.get(class_id, class_id):<24}{row['precision']:>10.3f}{row['recall']:>10.3f}"
                     f"{row['f1']:>8.3f}{row['support']:>6}")
    if result["most_confused"]:
        lines.append("")
        lines.append("Most confused: " + ", ".join(
            f"{names.get(p['actual'], p['actual'])} -> {names.get(p['predicted'], p['predicted'])} ({p['count']})"
            for p in result["most_confused"][:5]))
    if result["mistakes"]:
        worst = result["mistakes"][0]
        lines.append(f"{len(result['mistakes'])} mistakes; the most confident: {worst['file']} "
                     f"({worst['label']}, taken for {worst['predicted']} at {worst['p_predicted']:.2f})")
    if result["unknown_classes"]:
        lines.append("Skipped folders the model does not know: " + ", ".join(
            f"{k} ({v})" for k, v in result["unknown_classes"].items()))
    if result["unreadable"]:
        lines.append(f"Skipped {len(result['unreadable'])} unreadable files")
    if result.get("decisions") and (result["decisions"]["relabelled"] or result["decisions"]["excluded"]):
        lines.append(decisions_line(result["decisions"]))
    if "scope" in result:
        lines.append(f"Out of scope by the model's detector: {result['scope']['rejected']:.1%} of these photos "
                     f"(threshold {result['scope']['threshold']:.4f})")
    if result.get("groups"):
        lines.append(group_line_text(result["groups"]))
    if result.get("views"):
        grouped = "group_accuracy" in next(iter(result["views"].values()))
        lines += ["", f"{'view':<18}{'n':>6}{'accuracy':>10}{'not sure':>10}{'out of scope':>14}{'sure right':>12}"
                  + (f"{'group':>8}{'group sure':>12}" if grouped else "")]
        for view, row in result["views"].items():
            sure = "-" if row["sure_accuracy"] is None else f"{row['sure_accuracy']:.3f}"
            line = (f"{view:<18}{row['n']:>6}{row['accuracy']:>10.3f}{row['unsure']:>10.1%}"
                    f"{row['out_of_scope']:>14.1%}{sure:>12}")
            if grouped:
                line += f"{_share(row['group_accuracy']):>8}{_share(row['group_coverage']):>12}"
            lines.append(line)
    for group, row in result.get("out_of_scope", {}).items():
        lines.append(f"  none of the classes, {group}: {row['rejected']:.1%} of {row['n']} rejected ({row['of_kind']:.1%} "
                     f"as of their kind: guitar-unknown), AUROC {row['auroc']:.4f}")
    return "\n".join(lines)
