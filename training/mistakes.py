"""The photos a model gets wrong, as a table a person can walk through to find and fix wrong labels."""
from __future__ import annotations

import csv
from collections.abc import Sequence

import numpy as np

from .fsutil import atomic_path

FIELDS = ["file", "label", "predicted", "p_predicted", "p_label"]


def mistake_rows(files: Sequence[str], probs: np.ndarray, targets: np.ndarray, classes: Sequence[str]) -> list[dict]:
    """Every misclassified photo, the most confidently wrong first (those are the likeliest label errors)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != targets)
    p_label = probs[wrong, targets[wrong]]
    order = wrong[np.argsort(p_label, kind="stable")]
    return [
        {"file": str(files[k]), "label": classes[targets[k]], "predicted": classes[predicted[k]],
         "p_predicted": round(float(probs[k, predicted[k]]), 4), "p_label": round(float(probs[k, targets[k]]), 4)}
        for k in order
    ]


def write_mistakes_csv(rows: list[dict], path) -> None:
    """Write `mistake_rows` as CSV atomically (a header only when there is no mistake)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
