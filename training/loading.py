"""Loading an exported model: the bytes read once, checked against the run's report (SHA-256), unpickled, and its
metadata verified; `training.inference.Predictor` serves what this returns."""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from .runfiles import REPORT, ModelMeta, Report, RunFileError, check_meta, model_file, read_report


class ModelLoadError(RuntimeError):
    """The model file is missing, corrupt, tampered with, or not a learner."""


@dataclass(frozen=True)
class LoadedModel:
    """An exported learner as loaded and checked: its metadata, its run's report and the SHA-256 of the bytes."""

    learn: object  # fastai's Learner
    meta: ModelMeta
    report: Report  # {} when the run directory has none
    path: Path
    sha256: str


def load_model(path: str | Path, verify: bool = True) -> LoadedModel:
    """Load `export.pkl` (or a run directory), checking its SHA-256 against the run's report when `verify` and the
    report records one; a ModelLoadError saying what is wrong otherwise."""
    from fastai.learner import load_learner

    pkl = model_file(path)
    try:
        blob = pkl.read_bytes()  # hashed and unpickled from the same bytes: no swap can slip in between
    except FileNotFoundError:
        raise ModelLoadError(f"model file {pkl} does not exist; train one with `flask --app wsgi train`") from None
    except OSError as exc:
        raise ModelLoadError(f"model file {pkl} cannot be read ({exc.strerror})") from exc
    try:
        report = read_report(pkl.parent)
    except RunFileError as exc:
        raise ModelLoadError(str(exc)) from exc
    expected = report.get("model_sha256")  # a model without a report (copied on its own) has nothing to match
    sha256 = hashlib.sha256(blob).hexdigest()
    if verify and expected and sha256 != expected:
        raise ModelLoadError(f"{pkl} does not match the SHA-256 recorded in {pkl.parent / REPORT}; refusing to load it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn = load_learner(io.BytesIO(blob), cpu=True)
    except Exception as exc:  # a truncated or foreign pickle raises many different types
        raise ModelLoadError(f"{pkl} is not a loadable fastai learner ({exc.__class__.__name__}: {exc})") from exc
    if not hasattr(learn, "model") or not hasattr(learn, "dls"):
        raise ModelLoadError(f"{pkl} is not a learner exported by this project")
    try:
        meta = check_meta(getattr(learn, "meta", None), pkl)
    except RunFileError as exc:
        raise ModelLoadError(str(exc)) from exc
    return LoadedModel(learn, meta, report, pkl, sha256)
