"""Classify files and folders from the command line, with the same runtime and answers as the server."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .batches import Unreadable, image_batches
from .imaging import is_image_file
from .inference import Predictor

BATCH = 16


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given, and the image files under folders (recursively), in a stable order."""
    found = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p)))
        else:
            found.append(path)
    return found


def predict_files(predictor: Predictor, paths: list[Path], top_k: int,
                  progress: bool = False) -> tuple[list[dict], list[Unreadable]]:
    """One result per readable image (as the API gives it) and the unreadable files with the reason."""
    results, unreadable = [], []
    for indices, images in image_batches(paths, BATCH, unreadable, progress=progress, desc="Classifying"):
        results.extend(p.as_result(str(paths[i]), top_k, predictor.unsure_below)
                       for i, p in zip(indices, predictor.predict(images)))
    return results, unreadable


def results_table(results: list[dict]) -> str:
    """A plain table: file, best answer, its probability, the two flags, and the group when the model has groups."""
    width = max([len(r["filename"]) for r in results] + [4])
    grouped = any(r.get("group") for r in results)
    lines = [f"{'file':<{width}}  {'prediction':<28}{'prob':>7}  {'not sure':<9}{'in scope':<9}"
             + (f"{'group':<24}{'prob':>6}  sure" if grouped else "")]
    for r in results:
        best = r["predictions"][0]
        label = best["name"] if r["in_scope"] else f"({best['name']})"
        line = (f"{r['filename']:<{width}}  {label:<28}{best['probability']:>7.3f}  "
                f"{'yes' if r['uncertain'] else 'no':<9}{'yes' if r['in_scope'] else 'no':<9}")
        if grouped:
            group = r["group"]
            line += f"{group['name']:<24}{group['probability']:>6.3f}  {'yes' if group['sure'] else 'no'}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def results_csv(results: list[dict], top_k: int) -> str:
    """The results as CSV: one row per file, the top-k labels and probabilities, the flags and the scope score."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["file"] + [f"{kind}_{k + 1}" for k in range(top_k) for kind in ("label", "probability")]
    writer.writerow(header + ["uncertain", "in_scope", "scope_score", "scope", "group", "group_probability",
                              "group_sure"])
    for r in results:
        cells = [c for p in r["predictions"] for c in (p["label"], p["probability"])]
        group = r.get("group") or {}
        writer.writerow([r["filename"], *cells, r["uncertain"], r["in_scope"], r["scope_score"], r["scope"],
                         group.get("label"), group.get("probability"), group.get("sure")])
    return buffer.getvalue()
