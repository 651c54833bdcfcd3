"""Load an exported learner once and predict fast: batched, no per-call DataLoader, thread-safe, with Grad-CAM."""
from __future__ import annotations

import hashlib
import io
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .imaging import to_batch
from .runfiles import REPORT, RunFileError, check_meta, model_file, read_report
from .runtimes import RuntimeUnavailable, make_forward


class ModelLoadError(RuntimeError):
    """The model file is missing, corrupt, tampered with, or not a learner."""


@dataclass(frozen=True)
class Prediction:
    """Class probabilities for one image, best first."""

    labels: list[str]
    probabilities: list[float]

    def top(self, k: int) -> list[tuple[str, float]]:
        """The `k` most likely classes with their probabilities."""
        return list(zip(self.labels[:k], self.probabilities[:k]))


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
        self.size: int = int(meta["size"])
        self.mean = tuple(meta["mean"])
        self.std = tuple(meta["std"])
        self.temperature: float = float(meta.get("temperature", 1.0))
        self.meta = meta
        self.runtime, self._forward = make_forward(self.model, self.size, runtime)
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
        results = []
        for row in self.probabilities(images):
            order = np.argsort(-row)
            results.append(Prediction([self.classes[i] for i in order], [float(row[i]) for i in order]))
        return results

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        """Class probabilities in `self.classes` order, shape (N, C)."""
        batch = to_batch(images, self.size, self.mean, self.std)
        # The temperature is already baked into the model's last layer at export.
        if not self.tta:
            return torch.softmax(self._forward(batch), dim=1).numpy()
        # A mirrored guitar is the same model (training flips photos too), so the mirror is a second opinion.
        both = torch.softmax(self._forward(torch.cat([batch, batch.flip(3)])), dim=1)
        return ((both[: len(batch)] + both[len(batch):]) / 2).numpy()

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

    def describe(self) -> dict:
        """What is loaded, for pages and the API."""
        return {
            "classes": self.classes,
            "backbone": self.meta.get("backbone"),
            "size": self.size,
            "recipe": self.meta.get("recipe"),
            "trained_at": self.meta.get("trained_at"),
            "temperature": self.temperature,
            "runtime": self.runtime,
            "tta": "flip" if self.tta else "off",
            "sha256": self.sha256 or self.report.get("model_sha256"),
        }
