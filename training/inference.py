"""Serve a loaded model (`training.loading`) fast: batched, no per-call DataLoader, thread-safe, with Grad-CAM."""
from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import graphs
from .classnames import ClassGroup, ClassKind, names_for
from .groups import top_groups
from .imaging import to_batch
from .loading import LoadedModel, ModelLoadError, load_model
from .openset import IMAGENET_CLASSES, ImageNetCheck, ImageNetProfile, ScopeDetector, WithFeatures, imagenet_names
from .runfiles import ModelMeta, Report
from .runtimes import BF16_READING_MARGIN, BF16_SCOPE_MARGIN, RuntimeUnavailable, make_forward

log = logging.getLogger(__name__)
IMAGENET_NAMES = functools.cache(imagenet_names)
DEFAULT_UNSURE_BELOW = 0.5  # for a model exported with no fitted "not sure" line, and none in its report either
__all__ = ["ModelLoadError", "Prediction", "Predictor"]  # ModelLoadError: raised by `Predictor.load`


@dataclass(frozen=True)
class GroupAnswer:
    """The most likely group of classes for one image: its summed probability, and whether that is reliable."""

    label: str
    name: str
    probability: float
    sure: bool  # at or above the model's group line: shown when the class answer is not sure

    def as_result(self) -> dict:
        return {"label": self.label, "name": self.name, "probability": round(self.probability, 6), "sure": self.sure}


@dataclass(frozen=True)
class Prediction:
    """Class probabilities for one image, best first."""

    labels: list[str]
    probabilities: list[float]
    names: list[str] | None = None     # display names, parallel to `labels`
    scope_score: float | None = None   # likeness to the training photos; None for a model without a detector
    in_scope: bool = True              # False: none of the classes, by the model's detector
    group: GroupAnswer | None = None   # None for a model without groups
    seen_as: tuple[str, float] | None = None  # what the ImageNet check reads an out-of-scope photo as, if sure
    of_kind: bool = False  # out of scope, but read as the classes' kind: "a guitar, but not one of my models"

    def top(self, k: int) -> list[tuple[str, float]]:
        """The `k` most likely classes with their probabilities."""
        return list(zip(self.labels[:k], self.probabilities[:k]))

    def as_result(self, filename: str, top_k: int, unsure_below: float) -> dict:
        """The answer as the API, the pages and `flask predict` give it."""
        top = self.top(top_k)
        uncertain = top[0][1] < unsure_below
        return {
            "filename": filename,
            "predictions": [{"label": label, "name": name, "probability": round(p, 6)}
                            for (label, p), name in zip(top, self.names or [label for label, _ in top])],
            # Which of the known classes: the top ones are close (the calibrated "not sure" line).
            "uncertain": uncertain,
            # Whether it is one of the known classes at all (always true for a model without a detector).
            "in_scope": self.in_scope,
            "scope_score": None if self.scope_score is None else round(self.scope_score, 6),
            "group": None if self.group is None else self.group.as_result(),
            "scope": self.scope_level(uncertain),
            "seen_as": None if self.seen_as is None else {"label": self.seen_as[0],
                                                           "probability": round(self.seen_as[1], 6)},
        }

    def scope_level(self, uncertain: bool) -> str:
        """The level the answer is given at: a class, a group of classes, the classes' kind, or none of them."""
        if not self.in_scope:
            return "guitar-unknown" if self.of_kind else "none"
        return "group" if uncertain and self.group is not None and self.group.sure else "class"


class Predictor:
    """An exported fastai learner ready to serve: eval mode, shared preprocessing, the fastest runtime that agrees."""

    def __init__(self, model: LoadedModel, runtime: str = "torch", tta: bool = False, export_in_child: bool = False):
        learn, meta = model.learn, model.meta
        self.learn = learn
        self.tta = tta
        self.model = learn.model.eval()
        self.report: Report = model.report
        self.path = model.path
        self.sha256 = model.sha256  # of the bytes actually loaded
        self.classes: list[str] = list(meta["classes"])
        self.names: dict[str, str] = names_for(self.classes, meta.get("names"))
        self.size: int = int(meta["size"])
        self.mean = tuple(meta["mean"])
        self.std = tuple(meta["std"])
        self.temperature: float = float(meta.get("temperature", 1.0))
        self.meta: ModelMeta = meta
        self.unsure_below, unsure_source = self._unsure_below(meta, self.report)
        # Where each value an answer depends on came from: "model" (its metadata, inside the .pkl), else what an
        # older export falls back to.
        self.sources: dict[str, str] = {
            "classes": "model", "names": "model" if meta.get("names") else "derived",
            "temperature": "model" if "temperature" in meta else "default", "unsure_below": unsure_source,
            "scope": "model" if meta.get("scope") else "none"}
        self.scope = ScopeDetector.from_meta(meta.get("scope"))
        self.groups = [ClassGroup.from_meta(g) for g in meta.get("groups") or []]
        self.group_unsure_below: float | None = meta.get("group_unsure_below")
        self.kind = ClassKind.from_meta(meta.get("kind"))
        # With a detector, one forward gives the logits and what it needs: [logits | features (| ImageNet logits,
        # or for an older export its ImageNet profile)].
        self.served = self.model  # the module the runtime runs
        if self.scope is not None:
            check = ImageNetCheck(self.mean, self.std)
            extra = [] if self.scope.profile_weights is None else [
                check if self.scope.reads_imagenet else ImageNetProfile(check, self.scope.profile_weights)]
            self.served = WithFeatures(self.model, *extra).eval()
        close_call = None if self.scope is None else self._near_scope_threshold
        export_elsewhere = functools.partial(graphs.export_in_child, self.path) if export_in_child else None
        self.runtime, self._forward = make_forward(self.served, self.size, runtime, n_classes=len(self.classes),
                                                   close_call=close_call, export_elsewhere=export_elsewhere)
        # fastai's Learner is not thread-safe, but a module in eval mode is; the lock only guards CAM's autograd use.
        self._cam_lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, runtime: str = "auto", tta: bool = False,
             export_in_child: bool = False) -> Predictor:
        """Load `export.pkl` (or a run directory), checking its SHA-256 against the run's report when present.

        `tta`: average each photo's probabilities with its mirror image's (twice the compute).
        `export_in_child`: an uncached graph is exported in a child process (a server loading beside its requests).
        """
        model = load_model(path, verify)
        try:
            return cls(model, runtime, tta, export_in_child)
        except RuntimeUnavailable as exc:
            raise ModelLoadError(f"{model.path} cannot be served with the {runtime} runtime: {exc}") from exc

    def predict(self, images: list[Image.Image]) -> list[Prediction]:
        """Predict a batch of RGB images in one forward pass."""
        if not images:
            return []
        probabilities, scope_scores, readings = self.outputs(images, readings=True)
        groups = self.group_answers(probabilities)
        results = []
        for row, score, group, reading in zip(probabilities, scope_scores, groups, readings):
            order = np.argsort(-row)
            scope = {} if score is None else {"scope_score": float(score), "in_scope": bool(self.scope.in_scope(score))}
            if reading is not None and not scope["in_scope"]:
                scope.update(seen_as=(IMAGENET_NAMES()[reading[0]], reading[1]), of_kind=reading[0] in self.scope.kin)
            labels = [self.classes[i] for i in order]
            results.append(Prediction(labels, [float(row[i]) for i in order], [self.names[c] for c in labels],
                                      group=group, **scope))
        return results

    def group_answers(self, probabilities: np.ndarray) -> list[GroupAnswer | None]:
        """Each image's most likely group, from its class probabilities (None each for a model without groups)."""
        if not self.groups:
            return [None] * len(probabilities)
        line = self.group_unsure_below
        return [GroupAnswer(self.groups[g].label, self.groups[g].name, float(p), line is not None and bool(p >= line))
                for g, p in zip(*top_groups(probabilities, self.groups, self.classes))]

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        """Class probabilities in `self.classes` order, shape (N, C)."""
        return self.outputs(images)[0]

    def outputs(self, images: list[Image.Image], readings: bool = False) -> tuple:
        """Class probabilities (N, C) and each photo's scope score (None without a detector); with `readings`, also
        the ImageNet check's sure reading of each photo ((class, probability), or None)."""
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
            scored = probabilities, [None] * len(batch)
        else:
            scored = probabilities, list(self.scope_scores(features))
        if not readings:
            return scored
        seen = (self.scope.seen_as(features[:, -IMAGENET_CLASSES:]) if self.scope is not None
                and self.scope.reads_imagenet else [None] * len(batch))
        return (*scored, seen)

    def scope_scores(self, columns: np.ndarray) -> np.ndarray:
        """Scope scores from the served output's columns after the logits: [features (| ImageNet logits, or an
        older export's ImageNet profile)]."""
        if self.scope.profile_weights is None:
            return self.scope.scores(columns)
        if self.scope.reads_imagenet:
            return self.scope.scores(columns[:, :-IMAGENET_CLASSES], imagenet=columns[:, -IMAGENET_CLASSES:])
        return self.scope.scores(columns[:, :-1], columns[:, -1])

    def _near_scope_threshold(self, output: torch.Tensor) -> torch.Tensor:
        """Rows of a bf16 output whose scope score is within bf16's error of the threshold (fp32 decides those)."""
        columns = output[:, len(self.classes):].numpy()
        close = np.abs(self.scope_scores(columns) - self.scope.threshold) < BF16_SCOPE_MARGIN
        if self.scope.reads_imagenet:  # and those whose sure reading of something else is near its line
            close |= self.scope.near_sure_line(columns[:, -IMAGENET_CLASSES:], BF16_READING_MARGIN)
        return torch.from_numpy(close)

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

    def _unsure_below(self, meta: ModelMeta, report: Report) -> tuple[float, str]:
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
            "sha256": self.sha256,
            "scope": None if self.scope is None else {"method": self.scope.method, "keep": self.scope.keep,
                                                      "threshold": round(self.scope.threshold, 6)},
            "groups": [{**g.to_meta(), "names": [self.names[c] for c in g.classes]} for g in self.groups],
            "group_unsure_below": self.group_unsure_below,
            "kind": None if self.kind is None else self.kind.to_meta(),
        }
