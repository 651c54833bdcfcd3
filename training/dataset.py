"""Scan a `DATA/<class>/*.jpg` folder: readable images, duplicate groups, and an honest train/valid split."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from tqdm.auto import tqdm

from .batches import Unreadable
from .classnames import ClassGroup, ClassKind, class_groups, class_kind, class_names, names_for
from .decoding import ImageError, open_image
from .fsutil import default_cache_dir, write_json
from .imaging import is_image_file
from .labels import Applied, apply_decisions

log = logging.getLogger(__name__)

# Perceptual hashes this close (out of 64 bits) are treated as the same photo re-encoded or resized.
NEAR_DUPLICATE_BITS = 3


class DatasetError(ValueError):
    """The data folder cannot be used for training or evaluation."""


@dataclass(frozen=True)
class Item:
    """One readable photo: its path relative to the data folder, label and fingerprints."""

    relpath: str
    label: str
    sha256: str
    phash: int


@dataclass
class DatasetScan:
    """What a data folder holds."""

    root: Path
    classes: list[str]
    items: list[Item]
    unreadable: list[Unreadable] = field(default_factory=list)
    decisions: Applied | None = None  # what DATA/labels.csv changed
    names: dict[str, str] = field(default_factory=dict)  # display names (DATA/classes.toml or from the ids)
    groups: list[ClassGroup] = field(default_factory=list)  # DATA/classes.toml's [groups], over these classes
    kind: ClassKind | None = None  # DATA/classes.toml's [kind]: what the classes all are

    def __post_init__(self):
        self.names = names_for(self.classes, self.names)

    def counts(self) -> dict[str, int]:
        """Readable images per class."""
        counts = Counter(item.label for item in self.items)
        return {label: counts.get(label, 0) for label in self.classes}

    def fingerprint(self) -> str:
        """A short hash of every file's path, label and content: changes when the data changes."""
        digest = hashlib.sha256()
        for item in sorted(self.items, key=lambda i: i.relpath):
            digest.update(f"{item.relpath}\0{item.label}\0{item.sha256}\n".encode())
        return digest.hexdigest()[:16]


def list_images(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Class folders (sorted) and (relative path, label) pairs for every image-named file."""
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist or is not a folder")
    classes, files = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        names = sorted(
            str(p.relative_to(root)) for p in class_dir.iterdir() if p.is_file() and is_image_file(p)
        )
        if names:
            classes.append(class_dir.name)
            files.extend((name, class_dir.name) for name in names)
    return classes, files


def labelled_images(root: Path) -> tuple[list[str], list[tuple[str, str]], Applied]:
    """`list_images` with the data owner's decisions (DATA/labels.csv) applied; and what they changed."""
    classes, files = list_images(root)
    files, applied = apply_decisions(root, classes, files)
    return classes, files, applied


def _fingerprint_file(path: str) -> tuple[str, int] | str:
    """(sha256, perceptual hash) of one image file, or the reason it cannot be read."""
    try:
        data = Path(path).read_bytes()
        img = open_image(data)
    except (ImageError, OSError) as exc:
        return str(exc)
    return hashlib.sha256(data).hexdigest(), int(str(imagehash.phash(img)), 16)


def scan_dataset(root: str | os.PathLike, cache_dir: Path | None = None, progress: bool = True) -> DatasetScan:
    """Read every image once (cached by size and mtime) and return readable items with fingerprints."""
    root = Path(root).resolve()
    classes, files, applied = labelled_images(root)
    cache_dir = cache_dir or default_cache_dir()
    cache_file = cache_dir / f"fingerprints-{hashlib.sha1(str(root).encode()).hexdigest()[:12]}.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}

    results: dict[str, list] = {}
    todo = []
    for relpath, _ in files:
        stat = (root / relpath).stat()
        key = [stat.st_size, stat.st_mtime_ns]
        cached = cache.get(relpath)
        if cached and cached[:2] == key:
            results[relpath] = cached
        else:
            todo.append((relpath, key))

    if todo:
        workers = min(len(todo) // 200 + 1, os.cpu_count() or 1)
        paths = [str(root / relpath) for relpath, _ in todo]
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                outcomes = pool.map(_fingerprint_file, paths, chunksize=64)
                outcomes = list(tqdm(outcomes, total=len(paths), desc="Reading images", disable=not progress))
        else:
            outcomes = [_fingerprint_file(p) for p in tqdm(paths, desc="Reading images", disable=not progress)]
        for (relpath, key), outcome in zip(todo, outcomes):
            results[relpath] = key + ([outcome] if isinstance(outcome, str) else [outcome[0], f"{outcome[1]:016x}"])
        try:
            write_json(cache_file, results)
        except OSError as exc:  # a read-only home must not stop training
            log.warning("could not write fingerprint cache %s: %s", cache_file, exc)

    items, unreadable = [], []
    for relpath, label in files:
        entry = results[relpath]
        if len(entry) == 3:
            unreadable.append(Unreadable(relpath, entry[2]))
            log.warning("skipping unreadable image %s: %s", relpath, entry[2])
        else:
            items.append(Item(relpath, label, entry[2], int(entry[3], 16)))
    names, groups = class_names(root, classes), class_groups(root, classes)
    classes = [c for c in classes if any(i.label == c for i in items)]
    groups = [ClassGroup(g.label, g.name, tuple(c for c in g.classes if c in classes)) for g in groups]
    return DatasetScan(root, classes, items, unreadable, applied, {c: names[c] for c in classes},
                       [g for g in groups if g.classes], class_kind(root))


def duplicate_groups(items: list[Item], max_bits: int = NEAR_DUPLICATE_BITS) -> list[list[int]]:
    """Groups (of two or more indices) of exact or near-duplicate photos, linked transitively."""
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    first_with_sha: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.sha256 in first_with_sha:
            union(index, first_with_sha[item.sha256])
        else:
            first_with_sha[item.sha256] = index
    hashes = np.array([item.phash for item in items], dtype=np.uint64)
    for index in range(len(items)):
        distances = np.bitwise_count(hashes[index + 1:] ^ hashes[index])
        for offset in np.nonzero(distances <= max_bits)[0]:
            union(index, index + 1 + int(offset))

    groups: dict[int, list[int]] = defaultdict(list)
    for index in range(len(items)):
        groups[find(index)].append(index)
    return [members for members in groups.values() if len(members) > 1]


def split_items(items: list[Item], valid_pct: float, seed: int) -> list[bool]:
    """Per-class random split in which every duplicate group lands wholly on one side."""
    if not 0 < valid_pct < 1:
        raise DatasetError(f"valid_pct must be between 0 and 1, got {valid_pct}")
    group_of = list(range(len(items)))
    for members in duplicate_groups(items):
        for index in members:
            group_of[index] = members[0]
    groups: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(group_of):
        groups[group].append(index)

    by_class: dict[str, list[list[int]]] = defaultdict(list)
    for members in groups.values():
        label = Counter(items[i].label for i in members).most_common(1)[0][0]
        by_class[label].append(members)

    rng = random.Random(seed)
    is_valid = [False] * len(items)
    for label in sorted(by_class):
        class_groups = sorted(by_class[label])
        rng.shuffle(class_groups)
        wanted = round(valid_pct * sum(len(g) for g in class_groups))
        taken = 0
        # Always leave at least one group for training.
        for members in class_groups[:-1]:
            if taken >= wanted:
                break
            for index in members:
                is_valid[index] = True
            taken += len(members)
    return is_valid


def check_trainable(scan: DatasetScan) -> None:
    """Refuse data that cannot make a classifier, saying why."""
    if not scan.items:
        raise DatasetError(
            f"no readable images in {scan.root}: expected one sub-folder per class with .jpg/.png files inside"
        )
    if len(scan.classes) < 2:
        raise DatasetError(
            f"found only one class ({scan.classes[0]!r}) in {scan.root}: a classifier needs at least two class folders"
        )
    small = [c for c, n in scan.counts().items() if n < 2]
    if small:
        raise DatasetError(f"classes with fewer than 2 readable images cannot be split: {', '.join(small)}")


def dataset_report(scan: DatasetScan) -> dict:
    """Class counts, unreadable files and duplicate groups, including those that cross classes."""
    groups = duplicate_groups(scan.items)
    described = []
    for members in groups:
        labels = sorted({scan.items[i].label for i in members})
        exact = len({scan.items[i].sha256 for i in members}) == 1
        described.append(
            {"files": [scan.items[i].relpath for i in members], "labels": labels, "exact": exact}
        )
    return {
        "root": str(scan.root),
        "classes": scan.classes,
        "names": scan.names,
        "counts": scan.counts(),
        "images": len(scan.items),
        "unreadable": [file.to_json() for file in scan.unreadable],
        "duplicate_groups": described,
        "duplicate_images": sum(len(g) for g in groups) - len(groups),
        "cross_class_groups": [g for g in described if len(g["labels"]) > 1],
        "fingerprint": scan.fingerprint(),
        "decisions": scan.decisions.as_dict() if scan.decisions else None,
    }
