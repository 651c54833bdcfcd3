"""The run directory's one home: its file names, the model metadata, and every run file read or written
(`report.json`, `split.json`, `state.json`)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict

from .fsutil import write_json

EXPORT = "export.pkl"
REPORT = "report.json"
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
TOP_LOSSES_PNG = "top_losses.png"
MISTAKES_CSV = "mistakes.csv"
SPLIT = "split.json"
STATE = "state.json"
CHECKPOINTS = "checkpoints"
# Bump when a key is renamed or its meaning changes; readers refuse versions they don't know.
SCHEMA_VERSION = 1


class RunFileError(ValueError):
    """A run file that is unreadable, from a newer version, or missing what every reader needs."""


class ModelMeta(TypedDict):
    """What travels inside `export.pkl` as `learn.meta`: everything serving needs besides the weights, so that the
    model file alone decides every answer (`report.json` only documents the run)."""

    classes: list[str]
    backbone: str
    size: int
    mean: list[float]
    std: list[float]
    recipe: str
    trained_at: str
    temperature: float
    scope: dict | None  # the "not one of my classes" detector (training.openset.ScopeDetector.to_meta)
    names: dict[str, str]  # class id -> display name (training.classnames); absent from older exports
    # The calibrated "not sure" line; absent from older exports, which fall back to their report's (with a warning).
    unsure_below: float
    # Groups of classes (training.classnames.ClassGroup.to_meta) and the group probability from which a group is
    # the answer to a "not sure" class answer (None: never); absent from older exports and for data without groups.
    groups: list[dict]
    group_unsure_below: float | None
    kind: dict | None  # what the classes all are (training.classnames.ClassKind.to_meta); absent: not given


class Validation(TypedDict, total=False):
    """Validation figures in `report.json` (see `training.metrics.classification_metrics`)."""

    accuracy: float
    macro_f1: float
    n: int
    per_class: dict[str, dict]
    confusion_matrix: list[list[int]]
    most_confused: list[dict]


class Report(TypedDict, total=False):
    """`report.json`: the run's per-epoch table, validation figures, provenance and the model's SHA-256."""

    schema_version: int
    classes: list[str]
    names: dict[str, str]
    backbone: str
    size: int
    recipe: dict
    weights: str
    split_seed: int
    dataset: dict
    stages: list[dict]  # StageRecord.to_json() of each stage
    validation: Validation
    calibration: dict
    unsure_below: float
    training_seconds: float
    precision: str
    device: str
    cuda_max_memory_gib: float | None
    trained_at: str
    packages: dict[str, str]
    model_sha256: str
    scope: dict | None  # the detector's method, threshold and the share of validation photos it rejects
    groups: dict  # training.groups.group_figures on the validation split; only for data with groups


@dataclass(frozen=True)
class SplitRow:
    """One photo of a run's split: its path relative to the data folder, its label, and the side it is on."""

    path: str
    label: str
    is_valid: bool


@dataclass(frozen=True)
class Split:
    """`split.json`: the train/valid split a run made once (from `training.dataset.split_items`) and keeps."""

    seed: int
    valid_pct: float
    rows: list[SplitRow]

    def paths(self, valid: bool) -> list[str]:
        """The photos on one side (paths relative to the data folder), in the split's order."""
        return [row.path for row in self.rows if row.is_valid == valid]


@dataclass
class StageRecord:
    """One finished stage of a run, as `state.json` keeps it and `report.json` lists it under "stages": what it
    trained, its learning rate (and the one lr_find suggested), its budget (elastic stages) and its epochs."""

    stage: str
    backbone: str
    size: int
    bs: int
    frozen: bool
    frozen_groups: int
    train_bn: bool
    lr: float | list[float] | str  # a number, a [low, high] pair, or "find"
    lr_found: float | None = None
    budget: dict | None = None  # how an elastic stage's epochs were decided (training.stage.budgeted_fit)
    epochs: list[dict] = field(default_factory=list)  # the per-epoch table (training.stage.EpochTable)

    @property
    def seconds(self) -> float:
        """Seconds spent in this stage's epochs (validation included)."""
        return epoch_table_seconds(self.epochs)

    def to_json(self) -> dict:
        """The record as stored: lr_found and budget only when the stage has them."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("lr_found", "budget")}

    @classmethod
    def from_json(cls, stored: dict) -> StageRecord:
        return cls(**stored)


def epoch_table_seconds(rows: list[dict]) -> float:
    """Seconds spent in the epochs of a per-epoch table."""
    return sum(row["seconds"] for row in rows)


@dataclass
class RunState:
    """`state.json`: what `--resume` needs to know about a run in progress, and the operations a run performs on it
    (`training.runstate` makes, checks and saves it)."""

    recipe: dict
    dataset_fingerprint: str
    pretrained: bool
    started: str
    completed: list[StageRecord] = field(default_factory=list)
    exported: bool = False
    running: dict | None = None  # the stage in progress: its name and the seconds of its finished epochs
    lost_seconds: float = 0.0  # epochs that killed processes did not finish, counted for an elastic stage's budget

    def mark_running(self, stage_name: str, rows: list[dict]) -> None:
        """Note the running stage's finished epochs (a resumed run counts them as spent)."""
        self.running = {"stage": stage_name, "seconds": epoch_table_seconds(rows)}

    def complete_stage(self, record: StageRecord) -> None:
        """A stage finished: record it; nothing is running any more."""
        self.completed.append(record)
        self.running = None

    def record_lost_seconds(self) -> None:
        """On resume: the epochs of a stage that a killed process did not finish are redone, but their time counts
        for the budget."""
        if self.running:
            self.lost_seconds += self.running["seconds"]
        self.running = None

    def mark_exported(self) -> None:
        self.exported = True

    @property
    def epoch_seconds(self) -> float:
        """Seconds spent in the epochs of the completed stages (validation included)."""
        return sum(record.seconds for record in self.completed)

    @property
    def spent_seconds(self) -> float:
        """Time spent by the processes of this run so far: every finished epoch, completed stage or not."""
        return self.epoch_seconds + self.lost_seconds

    def to_json(self) -> dict:
        """The state as stored: "running" only while a stage runs, "lost_seconds" only once some were lost."""
        stored = {"recipe": self.recipe, "dataset_fingerprint": self.dataset_fingerprint,
                  "pretrained": self.pretrained, "completed": [record.to_json() for record in self.completed],
                  "exported": self.exported, "started": self.started}
        if self.running is not None:
            stored["running"] = self.running
        if self.lost_seconds:
            stored["lost_seconds"] = self.lost_seconds
        return stored

    @classmethod
    def from_json(cls, stored: dict) -> RunState:
        return cls(recipe=stored["recipe"], dataset_fingerprint=stored["dataset_fingerprint"],
                   pretrained=stored["pretrained"], started=stored.get("started", ""),
                   completed=[StageRecord.from_json(record) for record in stored.get("completed", [])],
                   exported=stored.get("exported", False), running=stored.get("running"),
                   lost_seconds=stored.get("lost_seconds", 0.0))


# What serving cannot do without; the other keys are descriptive (older exports may lack some).
SERVING_META_KEYS = frozenset({"classes", "size", "mean", "std"})


def model_file(path: str | Path) -> Path:
    """A run directory or a .pkl path as the absolute .pkl path (relative paths: to the working directory)."""
    # absolute(), not resolve(): a symlinked run directory swapped for a new one must still be followed.
    path = Path(path).expanduser().absolute()
    return path / EXPORT if path.is_dir() else path


def checkpoint_file(out: Path, stage_number: int) -> Path:
    """The weights saved after stage `stage_number` (1-based) of a run."""
    return out / CHECKPOINTS / f"stage-{stage_number}.pth"


def lr_find_png(out: Path, stage_name: str) -> Path:
    """The lr_find plot of one stage."""
    return out / f"lr_find-{stage_name}.png"


def write_report(out: Path, report: dict) -> Report:
    """Write `report.json` atomically, stamped with the schema version; the report as written."""
    stamped = Report(schema_version=SCHEMA_VERSION, **{k: v for k, v in report.items() if k != "schema_version"})
    write_json(out / REPORT, stamped)
    return stamped


def read_report(run_dir: Path) -> Report:
    """`report.json` of a run ({} when there is none); a report from before versioning reads as version 1."""
    path = run_dir / REPORT
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise RunFileError(f"{path} is not valid JSON: {exc}") from exc
    version = report.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RunFileError(f"{path} has schema version {version!r}; this version of guitar-classifier reads up to "
                           f"{SCHEMA_VERSION}: upgrade it, or re-export the model with this version")
    return report


def check_meta(meta: dict | None, source: Path) -> ModelMeta:
    """The model metadata of an exported learner, or a clear error when it lacks what serving needs."""
    missing = sorted(SERVING_META_KEYS - set(meta or {}))
    if missing:
        raise RunFileError(f"{source} is not a learner exported by this project (its metadata lacks {', '.join(missing)})")
    return meta


def write_split(out: Path, split: Split) -> None:
    """Write `split.json` atomically."""
    write_json(out / SPLIT, {"seed": split.seed, "valid_pct": split.valid_pct,
                             "items": [asdict(row) for row in split.rows]})


def read_split(run_dir: Path, missing_ok: bool = False) -> Split | None:
    """A run's split; when it has none, None if `missing_ok`, else a RunFileError saying where it was looked for."""
    path = run_dir / SPLIT
    try:
        stored = json.loads(path.read_text())
        return Split(seed=stored["seed"], valid_pct=stored["valid_pct"],
                     rows=[SplitRow(item["path"], item["label"], bool(item["is_valid"])) for item in stored["items"]])
    except FileNotFoundError:
        if missing_ok:
            return None
        raise RunFileError(f"{path} does not exist: this needs the run directory the model was trained in") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise RunFileError(f"{path} is not a split file written by this project ({exc})") from exc


def validation_paths(run_dir: Path) -> set[str]:
    """The photos a run held out for validation (paths relative to its data folder), from its split file."""
    return set(read_split(run_dir).paths(valid=True))


def write_state(out: Path, state: RunState) -> None:
    """Write `state.json` atomically."""
    write_json(out / STATE, state.to_json())


def read_state(out: Path) -> RunState | None:
    """A run's saved state, or None when it has none (a run that has not started)."""
    path = out / STATE
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise RunFileError(f"{path} is not valid JSON ({exc}): delete the run directory, or choose another --out") from exc
    try:
        return RunState.from_json(stored)
    except (KeyError, TypeError, AttributeError) as exc:
        raise RunFileError(f"{path} is not a state file written by this project ({exc!r}): delete the run "
                           f"directory, or choose another --out") from exc
