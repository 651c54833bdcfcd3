"""The review queue: photos whose label looks wrong (confident learning), duplicates, unreadable and out-of-scope ones."""
from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbones import get_backbone
from .batches import forward_files
from .dataset import DatasetScan, duplicate_groups, scan_dataset
from .fsutil import _UMASK, default_cache_dir, write_json
from .labels import latest_decisions, read_decisions
from .openset import FEATURE_BATCH, fit_scope

REVIEW_QUEUE = "review-queue.json"
REVIEW_BACKBONE = "efficientnet_lite0"
FOLDS = 5
# Perceptual hashes alone group different guitars shot alike on white (docs/experiments.md); a queued duplicate
# must also look the same to the backbone.
SAME_PHOTO_COSINE = 0.97
OUT_OF_SCOPE_KEEP = 0.99  # the 1% of photos least like the rest are queued as possibly none of the classes
# Queue order: what most likely hurts training first.
TIERS = {"label_issue": 0, "cross_class_duplicate": 0, "unreadable": 1, "out_of_scope": 2, "duplicate_in_class": 3}


@dataclass
class Entry:
    """One photo in the queue and why it is there."""

    path: str
    label: str | None
    reasons: list[str] = field(default_factory=list)
    suggested: str | None = None     # the most likely class by the out-of-sample probabilities
    suggested_p: float | None = None
    label_p: float | None = None     # the out-of-sample probability of the current label
    quality: float | None = None     # cleanlab's label quality score: lower = more likely mislabelled
    group: list[str] = field(default_factory=list)  # the other members of its duplicate group
    detail: str | None = None        # why an unreadable file cannot be read

    def rank_key(self) -> tuple:
        tier = min(TIERS[r] for r in self.reasons)
        return tier, self.quality if self.quality is not None else 1.0, self.path


def backbone_features(scan: DatasetScan, backbone: str, progress: bool) -> np.ndarray:
    """Pooled features of every photo from the pretrained backbone (no fine-tuning), cached by the data's content."""
    import torch
    from torch import nn

    from .runtimes import RuntimeUnavailable, make_forward

    cache = default_cache_dir() / f"review-features-{backbone}-{scan.fingerprint()}.npy"
    if cache.exists():
        return np.load(cache)
    spec = get_backbone(backbone)
    net = nn.Sequential(spec.body(pretrained=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    try:  # OpenVINO is faster than PyTorch on a CPU (docs/experiments.md); the numbers agree to fp32 precision
        forward = make_forward(net, spec.default_size, "openvino")[1]
    except RuntimeUnavailable:
        forward = make_forward(net, spec.default_size, "torch")[1]
    with torch.inference_mode():
        features = forward_files(forward, [scan.root / item.relpath for item in scan.items], FEATURE_BATCH,
                                 spec.default_size, spec.mean, spec.std, progress, desc="Features")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, features)
    return features


def out_of_sample_probabilities(features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                                seed: int = 0) -> np.ndarray:
    """Each photo's class probabilities from a logistic regression that never saw it, nor any duplicate of it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(FOLDS, int(np.bincount(labels).min()))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=300))
    return cross_val_predict(classifier, features, labels, groups=groups, method="predict_proba",
                             cv=StratifiedGroupKFold(max(folds, 2), shuffle=True, random_state=seed))


def group_ids(n: int, groups: list[list[int]]) -> np.ndarray:
    """A group number per photo: duplicates share one, so they land in the same fold."""
    ids = np.arange(n)
    for members in groups:
        ids[members] = members[0]
    return ids


def label_issue_entries(scan: DatasetScan, probs: np.ndarray, labels: np.ndarray) -> dict[int, Entry]:
    """Photos confident learning flags (Northcutt et al. 2021)."""
    from cleanlab.filter import find_label_issues

    flagged = find_label_issues(labels, probs, filter_by="prune_by_noise_rate")
    return {int(i): Entry(scan.items[i].relpath, scan.items[i].label, ["label_issue"]) for i in np.flatnonzero(flagged)}


def add_probabilities(entries: dict[int, Entry], scan: DatasetScan, probs: np.ndarray, labels: np.ndarray) -> None:
    """Each entry's suggested label, the probability of its own, and cleanlab's label quality score."""
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs)
    for index, entry in entries.items():
        best = int(np.argmax(probs[index]))
        entry.suggested, entry.suggested_p = scan.classes[best], round(float(probs[index, best]), 4)
        entry.label_p, entry.quality = round(float(probs[index, labels[index]]), 4), round(float(quality[index]), 4)


def confirmed_groups(scan: DatasetScan, groups: list[list[int]], features: np.ndarray) -> list[list[int]]:
    """Each hash group split into the photos that are the same to the backbone too (or byte for byte)."""
    from scipy.sparse.csgraph import connected_components

    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    confirmed = []
    for members in groups:
        same = unit[members] @ unit[members].T >= SAME_PHOTO_COSINE
        hashes = np.array([scan.items[i].sha256 for i in members])
        same |= hashes[:, None] == hashes[None, :]
        _, component = connected_components(same, directed=False)
        for number in np.unique(component):
            split = [members[k] for k in np.flatnonzero(component == number)]
            if len(split) > 1:
                confirmed.append(split)
    return confirmed


def duplicate_entries(scan: DatasetScan, groups: list[list[int]]) -> dict[int, list[str]]:
    """Reasons by photo: every member of a group that spans classes; all but the first of a group within one."""
    reasons: dict[int, list[str]] = {}
    for members in groups:
        if len({scan.items[i].label for i in members}) > 1:
            for index in members:
                reasons.setdefault(index, []).append("cross_class_duplicate")
        else:
            for index in members[1:]:
                reasons.setdefault(index, []).append("duplicate_in_class")
    return reasons


def out_of_scope_indices(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> list[int]:
    """Photos far from every class (Mahalanobis on the backbone features), each scored by a detector fitted
    without its own fold."""
    from sklearn.model_selection import GroupKFold

    scores = np.zeros(len(features), dtype=np.float32)
    for fitted, held in GroupKFold(FOLDS).split(features, labels, groups):
        # Only the distances are used: the quantile below replaces the detector's threshold.
        scores[held] = fit_scope(features[fitted], labels[fitted], features[:0]).scores(features[held])
    return [int(i) for i in np.flatnonzero(scores < np.quantile(scores, 1 - OUT_OF_SCOPE_KEEP))]


def build_queue(data_dir: str | Path, backbone: str = REVIEW_BACKBONE, progress: bool = True) -> dict:
    """The ranked review queue of a data folder, as plain data (photos with a decision in force are left out)."""
    from .dataset import check_trainable

    scan = scan_dataset(data_dir, progress=progress)
    check_trainable(scan)
    labels = np.array([scan.classes.index(item.label) for item in scan.items])
    duplicates = duplicate_groups(scan.items)
    groups = group_ids(len(scan.items), duplicates)
    features = backbone_features(scan, backbone, progress)
    probs = out_of_sample_probabilities(features, labels, groups)
    entries = label_issue_entries(scan, probs, labels)
    duplicates = confirmed_groups(scan, duplicates, features)
    for index, reasons in duplicate_entries(scan, duplicates).items():
        entries.setdefault(index, Entry(scan.items[index].relpath, scan.items[index].label)).reasons.extend(reasons)
    for index in out_of_scope_indices(features, labels, groups):
        entries.setdefault(index, Entry(scan.items[index].relpath, scan.items[index].label)).reasons.append("out_of_scope")
    add_probabilities(entries, scan, probs, labels)
    for members in duplicates:
        for index in members:
            if index in entries:
                entries[index].group = [scan.items[i].relpath for i in members if i != index]
    queue = list(entries.values()) + [Entry(file.file, Path(file.file).parent.name, ["unreadable"], detail=file.reason)
                                      for file in scan.unreadable]
    decided = latest_decisions(read_decisions(scan.root))
    queue = sorted((e for e in queue if e.path not in decided), key=Entry.rank_key)
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    return {
        "data": str(scan.root), "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "method": f"{FOLDS}-fold logistic regression on {backbone} ImageNet features, duplicate groups kept within "
                  "a fold; cleanlab find_label_issues (confident learning)",
        "photos": len(scan.items), "out_of_sample_accuracy": round(accuracy, 4),
        "classes": scan.classes, "names": scan.names, "data_fingerprint": scan.fingerprint(),
        "counts": {reason: sum(reason in e.reasons for e in queue) for reason in TIERS},
        "entries": [entry.__dict__ for entry in queue],
    }


def queue_path(data_dir: Path, out: Path | None = None) -> Path:
    return Path(out) if out else Path(data_dir) / REVIEW_QUEUE


def write_queue(queue: dict, path: Path) -> None:
    """Write the queue atomically."""
    write_json(path, queue)


def read_queue(path: Path) -> dict:
    """A queue written by `flask dataset review`."""
    return json.loads(Path(path).read_text())



def add_photo(folder: Path, stem: str, data: bytes) -> Path:
    """Write `data` as a new JPEG in `folder` (stem.jpg, else stem-2.jpg, ...): whole or not at all, never over a file."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        for n in range(1, 1000):
            target = folder / (f"{stem}.jpg" if n == 1 else f"{stem}-{n}.jpg")
            try:
                os.link(tmp, target)  # unlike a rename, a link refuses a name that is taken
                return target
            except FileExistsError:
                continue
        raise FileExistsError(f"no free name for {stem}.jpg in {folder}")
    finally:
        os.unlink(tmp)
