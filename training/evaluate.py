"""Score an exported model on a labelled folder with the same layout as the training data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .dataset import DatasetError, list_images
from .imaging import ImageError, open_image
from .inference import Predictor
from .metrics import classification_metrics
from .mistakes import mistake_rows


def evaluate_folder(predictor: Predictor, data_dir: str | Path, batch_size: int = 32, progress: bool = True) -> dict:
    """Accuracy, macro-F1, per-class scores, confusion matrix and the mistakes; unknown and unreadable files listed."""
    root = Path(data_dir)
    _, files = list_images(root)
    known = {name: k for k, name in enumerate(predictor.classes)}
    unknown: dict[str, int] = {}
    unreadable: list[dict] = []
    probs, targets, scored = [], [], []
    batch, batch_targets = [], []

    def flush():
        if batch:
            probs.append(predictor.probabilities(batch))
            targets.extend(batch_targets)
            batch.clear()
            batch_targets.clear()

    for relpath, label in tqdm(files, desc="Evaluating", disable=not progress):
        if label not in known:
            unknown[label] = unknown.get(label, 0) + 1
            continue
        try:
            batch.append(open_image(root / relpath))
        except ImageError as exc:
            unreadable.append({"file": relpath, "reason": str(exc)})
            continue
        batch_targets.append(known[label])
        scored.append(relpath)
        if len(batch) >= batch_size:
            flush()
    flush()
    if not targets:
        raise DatasetError(
            f"no images of the model's classes in {root}; the model knows: {', '.join(predictor.classes)}"
        )
    probs, targets = np.concatenate(probs), np.array(targets)
    result = classification_metrics(probs, targets, predictor.classes)
    result["classes"] = predictor.classes
    result["tta"] = predictor.describe()["tta"]
    result["unknown_classes"] = unknown
    result["unreadable"] = unreadable
    result["mistakes"] = mistake_rows(scored, probs, targets, predictor.classes)
    return result


def evaluation_summary(result: dict) -> str:
    """A readable, one-screen summary of `evaluate_folder`'s result."""
    lines = [f"Accuracy {result['accuracy']:.4f}   macro-F1 {result['macro_f1']:.4f}   on {result['n']} images", ""]
    lines.append(f"{'class':<24}{'precision':>10}{'recall':>10}{'f1':>8}{'n':>6}")
    for name, row in result["per_class"].items():
        lines.append(f"{name:<24}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>8.3f}{row['support']:>6}")
    if result["most_confused"]:
        lines.append("")
        lines.append("Most confused: " + ", ".join(
            f"{p['actual']} -> {p['predicted']} ({p['count']})" for p in result["most_confused"][:5]))
    if result["mistakes"]:
        worst = result["mistakes"][0]
        lines.append(f"{len(result['mistakes'])} mistakes; the most confident: {worst['file']} "
                     f"({worst['label']}, taken for {worst['predicted']} at {worst['p_predicted']:.2f})")
    if result["unknown_classes"]:
        lines.append("Skipped folders the model does not know: " + ", ".join(
            f"{k} ({v})" for k, v in result["unknown_classes"].items()))
    if result["unreadable"]:
        lines.append(f"Skipped {len(result['unreadable'])} unreadable files")
    return "\n".join(lines)
