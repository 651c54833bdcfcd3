"""The data owner's decisions about photos (keep, relabel, exclude): one CSV in the data folder, never the photos."""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
from dataclasses import asdict, dataclass
from pathlib import Path

from .fsutil import atomic_path, exclusive

DECISIONS_FILE = "labels.csv"
FIELDS = ("path", "decision", "label", "when")
DECISIONS = ("keep", "relabel", "exclude")


class DecisionsError(ValueError):
    """`labels.csv` cannot be read or names something that is not there."""


@dataclass(frozen=True)
class Decision:
    """One line of `labels.csv`: what the data owner decided about one photo (path relative to the data folder)."""

    path: str
    decision: str
    label: str = ""
    when: str = ""


@dataclass(frozen=True)
class Applied:
    """How many decisions a listing of the data folder honoured."""

    file: str
    kept: int = 0
    relabelled: int = 0
    excluded: int = 0
    unmatched: int = 0  # decisions about photos that are no longer in the folder

    def as_dict(self) -> dict:
        return asdict(self)


def decisions_path(root: Path) -> Path:
    return Path(root) / DECISIONS_FILE


def read_decisions(root: Path) -> list[Decision]:
    """Every decision in the order it was taken ([] when there is no file)."""
    path = decisions_path(root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and set(FIELDS) - set(rows[0]):
        raise DecisionsError(f"{path} must have the columns {', '.join(FIELDS)}")
    decisions = []
    for number, row in enumerate(rows, start=2):
        decision = Decision(row["path"], row["decision"], row.get("label") or "", row.get("when") or "")
        if decision.decision not in DECISIONS:
            raise DecisionsError(f"{path} line {number}: decision must be one of {', '.join(DECISIONS)}, "
                                 f"got {decision.decision!r}")
        if decision.decision == "relabel" and not decision.label:
            raise DecisionsError(f"{path} line {number}: a relabel needs the new label")
        decisions.append(decision)
    return decisions


def latest_decisions(decisions: list[Decision]) -> dict[str, Decision]:
    """The decision in force for each photo: its latest."""
    return {decision.path: decision for decision in decisions}


def _write(root: Path, decisions: list[Decision]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(d) for d in decisions)
    with atomic_path(decisions_path(root)) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


@contextlib.contextmanager
def _writing(root: Path):
    """One writer at a time, across the review page's threads and any other process: read, change, write."""
    with exclusive(Path(root) / f".{DECISIONS_FILE}.lock"):
        yield


def record_decision(root: Path, path: str, decision: str, label: str = "") -> Decision:
    """Append one decision, stamped with the time, rewriting the file atomically."""
    if decision not in DECISIONS:
        raise DecisionsError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    if decision == "relabel" and not label:
        raise DecisionsError("a relabel needs the new label")
    entry = Decision(path, decision, label if decision == "relabel" else "",
                     dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    with _writing(root):
        _write(root, [*read_decisions(root), entry])
    return entry


def undo_last_decision(root: Path) -> Decision | None:
    """Take back the latest decision (the photo's earlier one, if any, is in force again); the decision undone."""
    with _writing(root):
        decisions = read_decisions(root)
        if not decisions:
            return None
        _write(root, decisions[:-1])
    return decisions[-1]


def apply_decisions(root: Path, classes: list[str],
                    files: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], Applied]:
    """(path, label) pairs with excluded photos dropped and relabels applied; and what was applied."""
    in_force = latest_decisions(read_decisions(root))
    for decision in in_force.values():
        if decision.decision == "relabel" and decision.label not in classes:
            raise DecisionsError(f"{decisions_path(root)} relabels {decision.path} as {decision.label!r}, which is "
                                 f"not a class folder ({', '.join(classes)})")
    counts = {"keep": 0, "relabel": 0, "exclude": 0}
    listed = []
    for relpath, label in files:
        decision = in_force.get(relpath)
        if decision is None:
            listed.append((relpath, label))
            continue
        counts[decision.decision] += 1
        if decision.decision == "exclude":
            continue
        if decision.decision == "relabel":
            label = decision.label
        listed.append((relpath, label))
    known = {relpath for relpath, _ in files}
    applied = Applied(DECISIONS_FILE, kept=counts["keep"], relabelled=counts["relabel"], excluded=counts["exclude"],
                      unmatched=sum(path not in known for path in in_force))
    return listed, applied


def decisions_line(applied: dict) -> str:
    """What the data folder's labels.csv changed, in one line."""
    return (f"Honoured {applied['file']}: {applied['relabelled']} relabelled, {applied['excluded']} excluded, "
            f"{applied['kept']} kept as labelled")
