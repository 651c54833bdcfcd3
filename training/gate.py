"""The promotion gate: a candidate run scored against the serving one on a fixed labelled folder, photo by photo, and
refused when it is worse beyond chance (an exact McNemar test) or rejects far more of the folder as out of scope."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from . import versions
from .batches import Unreadable
from .dataset import DatasetError, labelled_images
from .evaluate import score_files
from .inference import ModelLoadError, Predictor
from .versions import Pointer, Version, VersionError

ALPHA = 0.05  # a difference with p below this (two-sided exact McNemar) is beyond chance
# The folder is photos of the classes, so every rejection is a wrong one. A candidate that rejects more than this
# share of the folder more than the serving model (5 percentage points: 1 photo in 20 more answered as "none of
# them"), beyond chance, is refused: a margin alone would refuse noise on a small folder, a test alone a trifle on
# a large one.
SCOPE_MARGIN = 0.05


def mcnemar(b: int, c: int) -> float:
    """Exact McNemar p-value (two-sided) of discordant counts b and c: their split against a fair coin's."""
    return float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0


@dataclass(frozen=True)
class Comparison:
    """Two models' answers on the same photos, paired: top-1 right or wrong, and rejected as out of scope or not."""

    both_right: int
    only_serving_right: int
    only_candidate_right: int
    both_wrong: int
    both_rejected: int  # answered as none of the model's classes
    only_serving_rejected: int
    only_candidate_rejected: int
    unknown_classes: dict[str, int]  # folders neither model knows, with their photo counts (not scored)
    unreadable: int

    @property
    def n(self) -> int:
        return self.both_right + self.only_serving_right + self.only_candidate_right + self.both_wrong

    @property
    def p_value(self) -> float:
        """Exact McNemar on the photos only one of the two got right."""
        return mcnemar(self.only_serving_right, self.only_candidate_right)

    @property
    def scope_p_value(self) -> float:
        """Exact McNemar on the photos only one of the two rejected."""
        return mcnemar(self.only_candidate_rejected, self.only_serving_rejected)

    def share(self, count: int) -> float:
        return count / self.n if self.n else 0.0

    @property
    def serving_rejected(self) -> int:
        return self.both_rejected + self.only_serving_rejected

    @property
    def candidate_rejected(self) -> int:
        return self.both_rejected + self.only_candidate_rejected

    def refusals(self) -> list[str]:
        """Why the candidate may not replace the serving model; empty when it may."""
        reasons = []
        if self.only_serving_right > self.only_candidate_right and self.p_value < ALPHA:
            reasons.append(f"worse beyond chance: only the serving model was right on {self.only_serving_right} "
                           f"photos, only the candidate on {self.only_candidate_right} (exact McNemar p = "
                           f"{self.p_value:.3g} < {ALPHA})")
        extra = self.share(self.candidate_rejected) - self.share(self.serving_rejected)
        if extra > SCOPE_MARGIN and self.scope_p_value < ALPHA:
            reasons.append(f"rejects far more as out of scope: {self.share(self.candidate_rejected):.1%} of the photos "
                           f"against {self.share(self.serving_rejected):.1%}, more than {SCOPE_MARGIN * 100:.0f} "
                           f"points more and beyond chance (only the candidate rejected {self.only_candidate_rejected}, "
                           f"only the serving model {self.only_serving_rejected}: p = {self.scope_p_value:.3g})")
        return reasons

    def to_json(self) -> dict:
        return {**asdict(self), "n": self.n, "p_value": self.p_value, "scope_p_value": self.scope_p_value,
                "serving_accuracy": self.share(self.both_right + self.only_serving_right),
                "candidate_accuracy": self.share(self.both_right + self.only_candidate_right),
                "serving_rejected": self.share(self.serving_rejected),
                "candidate_rejected": self.share(self.candidate_rejected)}

    def summary(self) -> str:
        """The counts, the p-values and the rejections, a few lines."""
        skipped = [f"Skipped folders neither model knows: {', '.join(f'{k} ({v})' for k, v in self.unknown_classes.items())}"
                   ] if self.unknown_classes else []
        return "\n".join([
            f"On {self.n} photos: both right {self.both_right}, only serving right {self.only_serving_right}, "
            f"only candidate right {self.only_candidate_right}, both wrong {self.both_wrong}",
            f"Accuracy: serving {self.share(self.both_right + self.only_serving_right):.1%}, candidate "
            f"{self.share(self.both_right + self.only_candidate_right):.1%}; exact McNemar p = {self.p_value:.3g}",
            f"Rejected as out of scope: serving {self.serving_rejected} ({self.share(self.serving_rejected):.1%}), "
            f"candidate {self.candidate_rejected} ({self.share(self.candidate_rejected):.1%}); only serving "
            f"{self.only_serving_rejected}, only candidate {self.only_candidate_rejected}, p = {self.scope_p_value:.3g}",
        ] + skipped + ([f"Skipped {self.unreadable} unreadable files"] if self.unreadable else []))


def answers(predictor: Predictor, paths: list[Path], labels: list[str], root: Path, batch_size: int,
            progress: bool) -> tuple[dict[int, bool], dict[int, bool]]:
    """Per readable photo (its index in `paths`): whether the top-1 is its label, and whether it was rejected."""
    unreadable: list[Unreadable] = []
    indices, probs, scores = score_files(predictor, paths, batch_size, unreadable, root, progress,
                                         f"Scoring {predictor.path.parent.name}")
    top = [predictor.classes[k] for k in probs.argmax(axis=1)] if len(indices) else []
    rejected = ([False] * len(indices) if predictor.scope is None
                else list(~predictor.scope.in_scope(np.array(scores, dtype=float))))
    return ({i: top[k] == labels[i] for k, i in enumerate(indices)},
            {i: bool(rejected[k]) for k, i in enumerate(indices)})


def compare(serving: Predictor, candidate: Predictor, data_dir: str | Path, batch_size: int = 32,
            progress: bool = False) -> Comparison:
    """Score both models on every photo of a labelled folder whose class either knows, and pair their answers."""
    root = Path(data_dir)
    _, files, _ = labelled_images(root)  # the data owner's relabels and exclusions count here too
    known = set(serving.classes) | set(candidate.classes)  # a class only one knows counts as wrong for the other
    unknown: dict[str, int] = {}
    for _, label in files:
        if label not in known:
            unknown[label] = unknown.get(label, 0) + 1
    files = [(relpath, label) for relpath, label in files if label in known]
    paths, labels = [root / relpath for relpath, _ in files], [label for _, label in files]
    serving_right, serving_rejected = answers(serving, paths, labels, root, batch_size, progress)
    candidate_right, candidate_rejected = answers(candidate, paths, labels, root, batch_size, progress)
    both = sorted(serving_right.keys() & candidate_right.keys())  # the same decoder: the same files are readable
    if not both:
        raise DatasetError(f"no readable photos of the models' classes in {root}")
    right = pairs([serving_right[i] for i in both], [candidate_right[i] for i in both])
    rejected = pairs([serving_rejected[i] for i in both], [candidate_rejected[i] for i in both])
    return Comparison(*right, *rejected[:3], unknown, len(files) - len(both))


def pairs(serving: list[bool], candidate: list[bool]) -> tuple[int, int, int, int]:
    """The paired 2x2 table: (both, only serving, only candidate, neither)."""
    s, c = np.array(serving, bool), np.array(candidate, bool)
    return int((s & c).sum()), int((s & ~c).sum()), int((~s & c).sum()), int((~s & ~c).sum())


@dataclass(frozen=True)
class Decision:
    """What `promote` decided, and the entry it logged."""

    promoted: bool
    refusals: list[str]
    comparison: Comparison | None
    entry: dict


def promote(models: Path, run: str | Path, against: Path | None = None, force: str | None = None,
            runtime: str = "auto", progress: bool = False) -> Decision:
    """Promote a run of `models` if it passes the gate against the serving run on `against`, or when forced with a
    reason; the decision is logged either way. With nothing served yet, the run is promoted unscored."""
    candidate_dir = versions.run_dir(models, run)
    sha256 = versions.check_run(candidate_dir)
    current = versions.read_pointer(models)
    if current is not None and current.current == Version(candidate_dir.name, sha256):
        raise VersionError(f"{candidate_dir.name} is already the promoted run")
    if current is not None and against is None and not force:
        raise VersionError("a run is already served: name a fixed labelled folder to compare them on with "
                           "--against DATA, or skip the comparison with --force REASON")
    comparison = None
    if current is not None and against is not None:
        comparison = compare(serving_predictor(models, runtime),
                             candidate_predictor(candidate_dir, sha256, runtime), against, progress=progress)
    refusals = (comparison.refusals() if comparison else
                ["not compared: no --against folder"] if current is not None else [])
    promoted = not refusals or bool(force)
    entry = {"action": "promote", "run": candidate_dir.name, "sha256": sha256,
             "serving": current and current.current.run, "serving_sha256": current and current.current.sha256,
             "against": against and str(Path(against).absolute()), "runtime": runtime,
             "decision": ("forced" if refusals else "promoted") if promoted else "refused", "refusals": refusals,
             "comparison": comparison and comparison.to_json(),
             "forced": {"reason": force, "overrode": refusals} if force else None, "operator": versions.operator()}
    with versions.locked(models):
        if versions.read_pointer(models) != current:  # another promotion or rollback landed while this one scored
            raise VersionError("the promoted run changed while the candidate was scored: run the promotion again")
        if promoted and versions.check_run(candidate_dir) != sha256:
            raise VersionError(f"{candidate_dir.name} changed while it was scored: run the promotion again")
        new = Version(candidate_dir.name, sha256)
        pointer = (Pointer(new, versions.now()) if current is None else current.promote(new)) if promoted else None
        versions.commit(models, entry, pointer)
    return Decision(promoted, refusals, comparison, entry)


def serving_predictor(models: Path, runtime: str) -> Predictor:
    """The serving run loaded for scoring; an error saying how to go on when its files are not the promoted ones."""
    path, version = versions.served_model(models)
    try:
        predictor = Predictor.load(path, runtime=runtime)
    except ModelLoadError as exc:
        raise VersionError(f"the serving run {version.run} cannot be scored ({exc}): promote without --against, "
                           f"with --force REASON") from exc
    if predictor.sha256 != version.sha256:
        raise VersionError(f"the serving run {version.run} has changed since it was promoted, so what it would be "
                           f"compared on is not what was served: promote without --against, with --force REASON")
    return predictor


def candidate_predictor(run: Path, sha256: str, runtime: str) -> Predictor:
    """The candidate loaded for scoring: the bytes whose SHA-256 was checked, or an error."""
    predictor = Predictor.load(run, runtime=runtime)
    if predictor.sha256 != sha256:
        raise VersionError(f"{run.name} changed while it was loaded: run the promotion again")
    return predictor
