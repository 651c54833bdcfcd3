"""Validation metrics and the confusion-matrix picture, from predicted probabilities and true labels."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: training runs headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # noqa: E402

from .fsutil import atomic_path  # noqa: E402


def classification_metrics(probs: np.ndarray, targets: np.ndarray, classes: list[str], top: int = 10) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1, confusion matrix and most-confused pairs."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    matrix = confusion_matrix(targets, predicted, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=labels, zero_division=0
    )
    pairs = [
        (classes[i], classes[j], int(matrix[i, j]))
        for i in labels for j in labels if i != j and matrix[i, j] > 0
    ]
    pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
    present = support > 0
    return {
        "n": int(len(targets)),
        "accuracy": float((predicted == targets).mean()) if len(targets) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                   "support": int(support[k])}
            for k, name in enumerate(classes)
        },
        "confusion_matrix": matrix.tolist(),
        "most_confused": [{"actual": a, "predicted": p, "count": c} for a, p, c in pairs[:top]],
    }


# The confusion matrix figure grows with the class count so labels and counts stay legible.
MATRIX_MIN_INCHES, MATRIX_INCHES_PER_CLASS, MATRIX_MARGIN_INCHES, MATRIX_DPI = 5.0, 0.55, 2.5, 100


def plot_confusion_matrix(matrix, classes: list[str], path, title: str = "Validation confusion matrix") -> None:
    """Write the confusion matrix as a PNG, counts in each cell, atomically."""
    matrix = np.asarray(matrix)
    size = max(MATRIX_MIN_INCHES, MATRIX_INCHES_PER_CLASS * len(classes) + MATRIX_MARGIN_INCHES)
    fig, ax = plt.subplots(figsize=(size, size), dpi=MATRIX_DPI)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Actual")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > threshold else "black", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
