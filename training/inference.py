"""Load an exported learner once and predict fast: batched, no per-call DataLoader, thread-safe, with Grad-CAM."""
from __future__ import annotations

import hashlib
import io
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .classnames import names_for
from .imaging import to_batch
from .openset import ImageNetCheck, ImageNetProfile, ScopeDetector, WithFeatures
from .runfiles import REPORT, RunFileError, check_meta, model_file, read_report
from .runtimes import BF16_SCOPE_MARGIN, RuntimeUnavailable, make_forward

log = logging.getLogger(__name__)
DEFAULT_UNSURE_BELOW = 0.5  # for a model exported with no fitted "not sure" line, and none in its report either


class ModelLoadError(RuntimeError):
    """The model file is missing, corrupt, tampered with, or not a learner."""


@dataclass(frozen=True)
class Prediction:
    """Class probabilities for one image, best first."""

    labels: list[str]
    probabilities: list[float]
    names: list[str] | None = None     # display names, parallel to `labels`
    scope_score: float | None = None   # likeness to the training photos; None for a model without a detector
    in_scope: bool = True              # False: none of the classes, by the model's detector

    def top(self, k: int) -> list[tuple[str, float]]:
        """The `k` most likely classes with their probabilities."""
        return list(zip(self.labels[:k], self.probabilities[:k]))

    def as_result(self, filename: str, top_k: int, unsure_below: float) -> dict:
        """The answer as the API, the pages and `flask predict` give it."""
        top = self.top(top_k)
        return {
            "filename": filename,
            "predictions": [{"label": label, "name": name, "probability": round(p, 6)}
                            for (label, p), name in zip(top, self.names or [label for label, _ in top])],
            # Which of the known classes: the top ones are close (the calibrated "not sure" line).
            "uncertain": top[0][1] < unsure_below,
            # Whether it is one of the known classes at all (always true for a model without a detector).
            "in_scope": self.in_scope,
            "scope_score": None if self.scope_score is None else round(self.scope_score, 6),
        }


class Predictor:
    """An exported fastai learner ready to serve: eval mode, shared preprocessing, the fastest runtime that agrees."""

    def __init__(self, learn, report: dict | None = None, path: Path | None = None, runtime: str = "torch",
                 tta: bool = False):
        self.learn = learn
        self.tta = tta
        self.model = learn.model.eval()
        self.report = report or {}
        self.path = path
        self.sha256: str | None = None  # of the bytes actually loaded; set by `load`
        meta = getattr(learn, "meta", None) or {}
        self.classes: list[str] = list(meta.get("classes") or learn.dls.vocab)
        self.names: dict[str, str] = names_for(self.classes, meta.get("names"))
        self.size: int = int(meta["size"])
        self.mean = tuple(meta["mean"])
        self.std = tuple(meta["std"])
        self.temperature: float = float(meta.get("temperature", 1.0))
        self.meta = meta
        self.unsure_below, unsure_source = self._unsure_below(meta, self.report)
        # Where each value an answer depends on came from: "model" (its metadata, inside the .pkl), else what an
        # older export falls back to.
        self.sources: dict[str, str] = {
            "classes": "model" if meta.get("classes") else "learner", "names": "model" if meta.get("names") else "derived",
            "temperature": "model" if "temperature" in meta else "default", "unsure_below": unsure_source,
            "scope": "model" if meta.get("scope") else "none"}
        self.scope = ScopeDetector.from_meta(meta.get("scope"))
        # With a detector, one forward gives the logits and what it needs: [logits | features (| ImageNet profile)].
        self.served = self.model  # the module the runtime runs
        if self.scope is not None:
            extra = [] if self.scope.profile_weights is None else [
                ImageNetProfile(ImageNetCheck(self.mean, self.std), self.scope.profile_weights)]
            self.served = WithFeatures(self.model, *extra).eval()
        close_call = None if self.scope is None else self._near_scope_threshold
        self.runtime, self._forward = make_forward(self.served, self.size, runtime, n_classes=len(self.classes),
                                                   close_call=close_call)
        # fastai's Learner is not thread-safe, but a module in eval mode is; the lock only guards CAM's autograd use.
        self._cam_lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, runtime: str = "auto", tta: bool = False) -> Predictor:
        """Load `export.pkl` (or a run directory), checking its SHA-256 against the run's report when present.

        `tta`: average each photo's probabilities with its mirror image's (twice the compute).
        """
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
        expected = report.get("model_sha256")
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
            check_meta(getattr(learn, "meta", None), pkl)
        except RunFileError as exc:
            raise ModelLoadError(str(exc)) from exc
        try:
            predictor = cls(learn, report, pkl, runtime, tta)
        except RuntimeUnavailable as exc:
            raise ModelLoadError(f"{pkl} cannot be served with the {runtime} runtime: {exc}") from exc
        predictor.sha256 = sha256
        return predictor

    def predict(self, images: list[Image.Image]) -> list[Prediction]:
        """Predict a batch of RGB images in one forward pass."""
        if not images:
            return []
        probabilities, scope_scores = self.outputs(images)
        results = []
        for row, score in zip(probabilities, scope_scores):
            order = np.argsort(-row)
            scope = {} if score is None else {"scope_score": float(score), "in_scope": bool(score >= self.scope.threshold)}
            labels = [self.classes[i] for i in order]
            results.append(Prediction(labels, [float(row[i]) for i in order], [self.names[c] for c in labels], **scope))
        return results

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        """Class probabilities in `self.classes` order, shape (N, C)."""
        return self.outputs(images)[0]

    def outputs(self, images: list[Image.Image]) -> tuple[np.ndarray, list]:
        """Class probabilities (N, C) and each photo's scope score (None without a detector)."""
        batch = to_batch(images, self.size, self.mean, self.std)
        n = len(self.classes)
        # The temperature is already baked into the model's last layer at export.
        if not self.tta:
            output = self._forward(batch)
            probabilities = torch.softmax(output[:, :n], dim=1).numpy()
            features = output[:, n:].numpy()
        else:  # a mirrored guitar is the same model (training flips photos too), so the mirror is a second opinion
            output = self._forward(torch.cat([batch, batch.flip(3)]))
            both = torch.softmax(output[:, :n], dim=1)
            probabilities = ((both[: len(batch)] + both[len(batch):]) / 2).numpy()
            features = ((output[: len(batch), n:] + output[len(batch):, n:]) / 2).numpy()
        if self.scope is None:
            return probabilities, [None] * len(batch)
        return probabilities, list(self.scope_scores(features))

    def scope_scores(self, columns: np.ndarray) -> np.ndarray:
        """Scope scores from the served output's columns after the logits: [features (| ImageNet profile)]."""
        if self.scope.profile_weights is None:
            return self.scope.scores(columns)
        return self.scope.scores(columns[:, :-1], columns[:, -1])

    def _near_scope_threshold(self, output: torch.Tensor) -> torch.Tensor:
        """Rows of a bf16 output whose scope score is within bf16's error of the threshold (fp32 decides those)."""
        scores = self.scope_scores(output[:, len(self.classes):].numpy())
        return torch.from_numpy(np.abs(scores - self.scope.threshold) < BF16_SCOPE_MARGIN)

    def grad_cam(self, image: Image.Image, label: str) -> np.ndarray:
        """Grad-CAM heat map in [0, 1] over the body's last feature map for class `label`."""
        index = self.classes.index(label)
        batch = to_batch([image], self.size, self.mean, self.std)
        with self._cam_lock, torch.enable_grad():
            with torch.no_grad():
                features = self.model.body(batch)
            features = features.detach().requires_grad_(True)
            score = self.model.head(features)[0, index]
            (grads,) = torch.autograd.grad(score, features)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * features.detach()).sum(dim=1))[0].numpy()
        top = cam.max()
        return cam / top if top > 0 else cam

    def _unsure_below(self, meta: dict, report: dict) -> tuple[float, str]:
        """The calibrated "not sure" line (a top probability below it is shown as not sure) and where it came from:
        the model's metadata; for a model exported before it travelled there, its report's, else the default."""
        if "unsure_below" in meta:
            return float(meta["unsure_below"]), "model"
        if "unsure_below" in report:
            log.warning("%s was exported without its 'not sure' line; using its report's (%s). Retrain, or re-export "
                        "it (docs/serving.md), so the model file alone decides its answers",
                        self.path or "the model", report["unsure_below"])
            return float(report["unsure_below"]), "report"
        log.warning("%s has no 'not sure' line, in its metadata or its report; using %s",
                    self.path or "the model", DEFAULT_UNSURE_BELOW)
        return DEFAULT_UNSURE_BELOW, "default"

    def describe(self) -> dict:
        """What is loaded, for pages and the API."""
        return {
            "classes": self.classes,
            "names": self.names,
            "backbone": self.meta.get("backbone"),
            "size": self.size,
            "recipe": self.meta.get("recipe"),
            "trained_at": self.meta.get("trained_at"),
            "temperature": self.temperature,
            "runtime": self.runtime,
            "tta": "flip" if self.tta else "off",
            "sha256": self.sha256 or self.report.get("model_sha256"),
            "scope": None if self.scope is None else {"method": self.scope.method, "keep": self.scope.keep,
                                                      "threshold": round(self.scope.threshold, 6)},
        }
