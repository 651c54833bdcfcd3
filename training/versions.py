"""Model versions: a models folder of runs, the pointer naming the promoted run (and those promoted before it, for
`rollback`), and the append-only log of every promotion decision. No model is loaded here (`training.gate` scores)."""
from __future__ import annotations

import contextlib
import getpass
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .fsutil import exclusive, sha256_file, write_json
from .runfiles import EXPORT, REPORT, RunFileError, read_report

POINTER = "promoted.json"  # which run is served, and the runs promoted before it
LOG = "promotions.jsonl"  # one JSON object per decision, appended, never rewritten
LOCK = ".lock"


class VersionError(ValueError):
    """A models folder, run, pointer or rollback that cannot be used as asked."""


@dataclass(frozen=True)
class Version:
    """A run as it was promoted: its name in the models folder and the SHA-256 of its export.pkl then."""

    run: str
    sha256: str


@dataclass(frozen=True)
class Pointer:
    """`promoted.json`: the served version, when it was promoted, and the versions served before it, oldest first."""

    current: Version
    promoted_at: str
    history: tuple[Version, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"run": self.current.run, "sha256": self.current.sha256, "promoted_at": self.promoted_at,
                "history": [{"run": v.run, "sha256": v.sha256} for v in self.history]}

    @classmethod
    def from_json(cls, stored: dict) -> Pointer:
        return cls(Version(stored["run"], stored["sha256"]), stored.get("promoted_at", ""),
                   tuple(Version(v["run"], v["sha256"]) for v in stored.get("history", [])))

    def promote(self, version: Version) -> Pointer:
        """This pointer with `version` served and the current one pushed onto the history."""
        return Pointer(version, now(), (*self.history, self.current))

    def rolled_back(self) -> Pointer:
        """This pointer with the previous version served again (the current one dropped, as a bad promotion)."""
        if not self.history:
            raise VersionError(f"{self.current.run} is the only run ever promoted: there is nothing to roll back to")
        return Pointer(self.history[-1], now(), self.history[:-1])


@dataclass(frozen=True)
class RunInfo:
    """One run of a models folder, for `models list`."""

    name: str
    sha256: str | None
    trained_at: str | None
    accuracy: float | None
    promoted: bool


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def operator() -> str:
    """Who runs the command, for the log (the login name, as getpass finds it: LOGNAME, USER, ... or the uid)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no such variable and no passwd entry, e.g. an arbitrary uid in a container
        return f"uid {os.getuid()}"


def read_pointer(models: Path) -> Pointer | None:
    """The folder's pointer, or None when no run has been promoted yet."""
    path = models / POINTER
    try:
        return Pointer.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise VersionError(f"{path} is not a pointer written by this project ({exc!r})") from exc


def served_model(models: Path) -> tuple[Path, Version]:
    """What the server serves from `models`: the promoted run's export.pkl and the version it was promoted as. The
    one place the pointer is resolved (serving and the gate both call it)."""
    pointer = read_pointer(models)
    if pointer is None:
        raise VersionError(f"no run is promoted in {models}: `flask --app wsgi models promote RUN` names one")
    return models / pointer.current.run / EXPORT, pointer.current


def run_dir(models: Path, run: str | Path) -> Path:
    """A run of the models folder by name (or by its path inside it)."""
    path = Path(run)
    if len(path.parts) > 1 or path.is_absolute():  # a path: it must be one of the folder's runs
        if path.expanduser().absolute().parent != models.absolute():
            raise VersionError(f"{run} is not a run of {models}: train into it (`flask --app wsgi train --out "
                               f"{models}/NAME`) or copy the run directory there")
        path = Path(path.name)
    name = path.name
    if name.startswith(".") or name in ("", ".."):
        raise VersionError(f"{run!r} is not a run name")
    found = models / name
    if not (found / EXPORT).is_file():
        raise VersionError(f"{found} has no {EXPORT}; the runs of {models} are: "
                           f"{', '.join(r.name for r in list_runs(models)) or 'none'}")
    return found


def check_run(run: Path) -> str:
    """The SHA-256 of a run's export.pkl, once it matches the one its report.json records (what serving checks)."""
    try:
        expected = read_report(run).get("model_sha256")
    except RunFileError as exc:
        raise VersionError(str(exc)) from exc
    if not expected:
        raise VersionError(f"{run / REPORT} records no model SHA-256: only a run `flask train` wrote can be promoted")
    sha256 = sha256_file(run / EXPORT)
    if sha256 != expected:
        raise VersionError(f"{run / EXPORT} does not match the SHA-256 in {run / REPORT}: a run still being written, "
                           f"or changed since; refusing it")
    return sha256


def list_runs(models: Path) -> list[RunInfo]:
    """The folder's runs (sub-folders with an export.pkl), by name, the promoted one marked."""
    if not models.is_dir():
        raise VersionError(f"{models} is not a folder (GUITARS_MODELS, or --models)")
    pointer = read_pointer(models)
    runs = []
    for path in sorted(p for p in models.iterdir() if p.is_dir() and (p / EXPORT).is_file()):
        try:
            report = read_report(path)
        except RunFileError:
            report = {}
        runs.append(RunInfo(path.name, report.get("model_sha256"), report.get("trained_at"),
                            report.get("validation", {}).get("accuracy"),
                            pointer is not None and pointer.current.run == path.name))
    return runs


@contextlib.contextmanager
def locked(models: Path):
    """Hold the folder's lock: one promotion or rollback at a time, the pointer and the log changed together."""
    models.mkdir(parents=True, exist_ok=True)
    with exclusive(models / LOCK):
        yield


def commit(models: Path, entry: dict, pointer: Pointer | None = None) -> None:
    """With the folder's lock held: write `pointer` (atomically) when given, then append `entry` to the log."""
    if pointer is not None:
        write_json(models / POINTER, pointer.to_json())
    line = json.dumps({"time": now(), **entry}, default=str) + "\n"
    fd = os.open(models / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write of one whole line: the log is never rewritten, only grown
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(models: Path) -> list[dict]:
    """Every decision logged in the folder, oldest first."""
    try:
        text = (models / LOG).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def rollback(models: Path) -> tuple[Version, Version]:
    """Serve the run promoted before the current one again; (the version now served, the one rolled back)."""
    with locked(models):
        pointer = read_pointer(models)
        if pointer is None:
            raise VersionError(f"no run is promoted in {models}: there is nothing to roll back")
        back = pointer.rolled_back()
        sha256 = check_run(run_dir(models, back.current.run))
        if sha256 != back.current.sha256:  # serving would refuse it: say so now, not in every worker's log
            raise VersionError(f"{back.current.run} has changed since it was promoted (its export.pkl is not the "
                               f"one promoted): promote it again, through the gate")
        commit(models, {"action": "rollback", "decision": "rolled back", "run": back.current.run,
                        "sha256": back.current.sha256, "previous": pointer.current.run, "operator": operator()},
               back)
    return back.current, pointer.current
