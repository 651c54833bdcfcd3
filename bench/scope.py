"""Scope detectors side by side on one trained run: what each keeps of the photos of its classes (validation photos
and the views cut from them) and rejects of photos of none of them, by kind, with leave-one-kind-out figures for
whatever learns from out-of-scope photos.

    python -m bench.scope RUN_DIR DATA_DIR OOD_DIR

Every detector's threshold keeps 95% of the validation photos, as the shipped one does. The photos' features and the
ImageNet check's logits are cached in RUN_DIR/scope_sets.npz (delete it after retraining).
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np
from fastai.vision.core import PILImage
from PIL import Image
from sklearn.linear_model import LogisticRegression

from training.batches import image_batches
from training.imaging import to_batch
from training.inference import Predictor
from training.openset import (
    DEFAULT_KEEP,
    IMAGENET_CLASSES,
    ImageNetCheck,
    feature_forward,
    fit_scope,
    imagenet_names,
    profile_scores,
)
from training.predict_files import expand_paths
from training.runfiles import read_split
from training.views import VIEWS, CloseUp, view_crops

BATCH = 32
SEED = 0


def outputs_of(forward, images: list[Image.Image], size, mean, std) -> np.ndarray:
    return forward(to_batch(images, size, mean, std)).float().numpy()


def compute_sets(run: Path, data: Path, ood: Path) -> dict[str, np.ndarray]:
    """[logits | features | ImageNet logits] of every set, and each out-of-scope photo's kind (its folder)."""
    predictor = Predictor.load(run, runtime="torch")
    check = ImageNetCheck(predictor.mean, predictor.std)
    forward = feature_forward(predictor.model, predictor.size, len(predictor.classes), check=check)
    size, mean, std = predictor.size, predictor.mean, predictor.std
    split = read_split(run)
    train = [data / p for p in split.paths(valid=False)]
    valid = [data / p for p in split.paths(valid=True)]
    sets, started = {}, time.perf_counter()
    close_up = CloseUp(p=1.0)
    random.seed(SEED)
    rows = {"train": [], "train_closeup": [], "valid": [], **{f"view_{v}": [] for v in VIEWS}}
    for _, images in image_batches(train, BATCH, progress=True, desc="train"):
        rows["train"].append(outputs_of(forward, images, size, mean, std))
        crops = [close_up.encodes(PILImage(img)) for img in images]
        rows["train_closeup"].append(outputs_of(forward, crops, size, mean, std))
    for indices, images in image_batches(valid, BATCH, progress=True, desc="valid"):
        rows["valid"].append(outputs_of(forward, images, size, mean, std))
        for view in VIEWS:
            crops = [found[view] for found in (view_crops(img, i) for i, img in zip(indices, images)) if view in found]
            if crops:
                rows[f"view_{view}"].append(outputs_of(forward, crops, size, mean, std))
    sets = {name: np.concatenate(parts) for name, parts in rows.items() if parts}
    ood_files = expand_paths([ood])
    sets["ood"] = np.concatenate([outputs_of(forward, images, size, mean, std)
                                  for _, images in image_batches(ood_files, BATCH, progress=True, desc="ood")])
    sets["ood_kind"] = np.array([f"{p.parent.parent.name}/{p.parent.name}" for p in ood_files])
    train_labels = [row.label for row in split.rows if not row.is_valid]
    sets["train_labels"] = np.array([predictor.classes.index(label) for label in train_labels])
    print(f"features of every set: {time.perf_counter() - started:.0f} s", flush=True)
    return sets


def load_sets(run: Path, data: Path, ood: Path) -> dict[str, np.ndarray]:
    cache = run / "scope_sets.npz"
    if not cache.exists():
        np.savez(cache, **compute_sets(run, data, ood))
    return dict(np.load(cache))


def l2(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-8)


def detectors(sets: dict, n_classes: int) -> tuple[dict, object]:
    """Each candidate as a function from a set's rows to scope scores (higher = in scope), and the shipped one."""
    def parts(rows):
        return rows[:, n_classes:-IMAGENET_CLASSES], rows[:, -IMAGENET_CLASSES:]

    train_f, train_i = parts(sets["train"])
    close_f, close_i = parts(sets["train_closeup"])
    valid_f, valid_i = parts(sets["valid"])
    labels = sets["train_labels"]
    both_f, both_i, both_labels = np.r_[train_f, close_f], np.r_[train_i, close_i], np.r_[labels, labels]
    candidates = {}
    for name, normalise, (fit_f, fit_i, fit_labels) in [
        ("shipped: Mahalanobis + ImageNet profile", False, (train_f, train_i, labels)),
        ("Mahalanobis++ (L2 features) + profile", True, (train_f, train_i, labels)),
        ("shipped, fitted with close-ups too", False, (both_f, both_i, both_labels)),
        ("Mahalanobis++ with close-ups too", True, (both_f, both_i, both_labels)),
    ]:
        prep = l2 if normalise else (lambda f: f)
        detector = fit_scope(prep(fit_f), fit_labels, prep(valid_f), train_imagenet=fit_i, valid_imagenet=valid_i)

        def score(rows, detector=detector, prep=prep):
            features, imagenet = parts(rows)
            return detector.scores(prep(features), profile_scores(imagenet, detector.profile_weights))

        candidates[name] = score
    # The check's sure reading of something else on top (no out-of-scope photo used: its line is fitted on the
    # training and validation photos alone).
    reading = fit_scope(both_f, both_labels, valid_f, train_imagenet=both_i, valid_imagenet=valid_i, normalise=True,
                        reading=True)
    candidates["Mahalanobis++ with close-ups + reading"] = lambda rows: reading.scores(*parts(rows)[:1],
                                                                                       imagenet=parts(rows)[1])
    print(f"the check's reading: sure line {reading.sure_line}, theirs "
          f"{[imagenet_names()[c] for c in np.flatnonzero(reading.theirs)] if reading.theirs is not None else None}")
    alone = fit_scope(train_f, labels, valid_f)
    candidates["Mahalanobis alone"] = lambda rows: alone.scores(parts(rows)[0])
    return candidates, reading


def rejected(score, rows, threshold) -> float:
    return float((score(rows) < threshold).mean())


def oe_columns(rows: np.ndarray, n_classes: int, base) -> np.ndarray:
    """`base`'s two standardised scores (Mahalanobis++ and the ImageNet profile) as a logistic regression's inputs."""
    features, imagenet = rows[:, n_classes:-IMAGENET_CLASSES], rows[:, -IMAGENET_CLASSES:]
    m_mean, m_std, p_mean, p_std = base.standardise
    return np.c_[(base.mahalanobis(l2(features)) - m_mean) / m_std,
                 (profile_scores(imagenet, base.profile_weights) - p_mean) / p_std]


def outlier_exposure(sets: dict, n_classes: int, base, leave_out: str | None):
    """Outlier exposure: a logistic regression over `base`'s scores with photos of none of the classes (but the kind
    `leave_out`) as negatives; its score function and threshold (keeping 95% of the validation photos)."""
    kinds = sets["ood_kind"]
    valid, ood = oe_columns(sets["valid"], n_classes, base), oe_columns(sets["ood"], n_classes, base)
    negatives = ood[kinds != leave_out]
    model = LogisticRegression(class_weight="balanced").fit(np.r_[valid, negatives],
                                                            np.r_[np.ones(len(valid)), np.zeros(len(negatives))])
    def score(rows):
        return model.decision_function(oe_columns(rows, n_classes, base))

    return score, np.quantile(model.decision_function(valid), 1 - DEFAULT_KEEP)


def main(run: Path, data: Path, ood: Path) -> None:
    sets = load_sets(run, data, ood)
    n_classes = int(sets["train_labels"].max()) + 1
    kinds = sets["ood_kind"]
    kind_names = list(np.unique(kinds))
    views = [v for v in VIEWS if f"view_{v}" in sets]
    print(f"In scope: {len(sets['valid'])} validation photos (each threshold keeps {DEFAULT_KEEP:.0%}); views cut "
          f"from them: " + ", ".join(f"{v} {len(sets[f'view_{v}'])}" for v in views))
    print("Share rejected as out of scope (lower is better for views, higher for the rest):")
    header = f"{'detector':<42}" + "".join(f"{v[:9]:>10}" for v in views) + "".join(f"{k.split('/')[1][:12]:>13}"
                                                                                    for k in kind_names)
    print(header)
    candidates, reading = detectors(sets, n_classes)
    for name, score in candidates.items():
        threshold = np.quantile(score(sets["valid"]), 1 - DEFAULT_KEEP)
        row = f"{name:<42}" + "".join(f"{rejected(score, sets[f'view_{v}'], threshold):>10.1%}" for v in views)
        ood_scores = score(sets["ood"])
        row += "".join(f"{(ood_scores[kinds == k] < threshold).mean():>13.1%}" for k in kind_names)
        print(row, flush=True)
    train_f = sets["train"][:, n_classes:-IMAGENET_CLASSES]
    base = fit_scope(l2(train_f), sets["train_labels"], l2(sets["valid"][:, n_classes:-IMAGENET_CLASSES]),
                     train_imagenet=sets["train"][:, -IMAGENET_CLASSES:],
                     valid_imagenet=sets["valid"][:, -IMAGENET_CLASSES:])
    score, threshold = outlier_exposure(sets, n_classes, base, None)
    ood_scores = score(sets["ood"])
    print(f"{'outlier exposure, every kind (tuned on)':<42}"
          + "".join(f"{rejected(score, sets[f'view_{v}'], threshold):>10.1%}" for v in views)
          + "".join(f"{(ood_scores[kinds == k] < threshold).mean():>13.1%}" for k in kind_names))
    row = f"{'outlier exposure, the kind left out':<42}" + " " * 10 * len(views)
    for kind in kind_names:
        score, threshold = outlier_exposure(sets, n_classes, base, kind)
        row += f"{rejected(score, sets['ood'][kinds == kind], threshold):>13.1%}"
    print(row)
    kind_levels(sets, n_classes, reading, kind_names)


def kind_levels(sets: dict, n_classes: int, detector, kind_names: list[str]) -> None:
    """Of each kind's photos, the share rejected and answered "a guitar, but not one of my models" (the check reads
    it as an electric or acoustic guitar, at SEEN_AS_LINE or surer), and the share rejected plainly."""
    from training.openset import SEEN_AS_LINE, softmax

    names = imagenet_names()
    kin = [names.index("electric guitar"), names.index("acoustic guitar")]
    threshold = detector.threshold
    kinds = sets["ood_kind"]
    for name, rows in [(v, sets[f"view_{v}"]) for v in VIEWS if f"view_{v}" in sets] + [
            (k.split("/")[1], sets["ood"][kinds == k]) for k in kind_names]:
        features, imagenet = rows[:, n_classes:-IMAGENET_CLASSES], rows[:, -IMAGENET_CLASSES:]
        out = detector.scores(features, imagenet=imagenet) < threshold
        probabilities = softmax(imagenet)
        of_kind = np.isin(probabilities.argmax(axis=1), kin) & (probabilities.max(axis=1) >= SEEN_AS_LINE)
        print(f"{name:<22} rejected {out.mean():6.1%}   as 'a guitar, not one of mine' {(out & of_kind).mean():6.1%}"
              f"   as none {(out & ~of_kind).mean():6.1%}")


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:4]))
