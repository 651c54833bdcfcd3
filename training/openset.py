"""Is a photo one of the classes at all? A detector fitted on the training photos' features, shipped in the model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

from .imaging import open_image, to_batch

# Share of in-scope validation photos the threshold keeps; the rest of what scores lower is "not one of my classes".
DEFAULT_KEEP = 0.95
FEATURE_BATCH = 32


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The model up to its penultimate features, and its last layer (the class logits)."""
    *features, last = list(model.head)
    return nn.Sequential(model.body, *features), last


class WithFeatures(nn.Module):
    """The classifier answering logits and penultimate features in one pass, as one tensor: [logits | features]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.features, self.last = split_head(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return torch.cat([self.last(features), features], dim=1)


@dataclass
class ScopeDetector:
    """Mahalanobis distance to the nearest class mean of the training photos' penultimate features, under one shared
    covariance (Lee et al., 2018); the score is its negative: higher = more like the training photos."""

    means: np.ndarray       # (classes, D)
    precision: np.ndarray   # (D, D), the inverse of the shared covariance
    threshold: float        # scores below it are out of scope
    keep: float             # the share of in-scope validation photos the threshold was chosen to keep

    def __post_init__(self):
        # precision = L Lᵀ, so the distance is a plain Euclidean one after projecting by L: one matrix product
        # per batch instead of one quadratic form per class and photo (0.1 ms a photo instead of 3).
        self._project = np.linalg.cholesky(self.precision.astype(np.float64)).astype(np.float32)
        projected_means = self.means @ self._project
        self._projected_means, self._mean_norms = projected_means, (projected_means ** 2).sum(axis=1)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Negative squared Mahalanobis distance of each row to its nearest class mean."""
        features = np.asarray(features, dtype=np.float32)
        if len(features) == 0:
            return np.zeros(0, dtype=np.float32)
        projected = features @ self._project
        distances = ((projected ** 2).sum(axis=1, keepdims=True) - 2 * projected @ self._projected_means.T
                     + self._mean_norms[None, :])
        return -distances.min(axis=1)

    def in_scope(self, scores: np.ndarray) -> np.ndarray:
        """Which scores are in scope."""
        return np.asarray(scores) >= self.threshold

    def to_meta(self) -> dict:
        """Plain data for `learn.meta` (pickled inside export.pkl, so the SHA-256 check covers it)."""
        return {"method": "mahalanobis", "means": self.means, "precision": self.precision,
                "threshold": self.threshold, "keep": self.keep}

    @classmethod
    def from_meta(cls, meta: dict | None) -> ScopeDetector | None:
        """The detector stored in a model's metadata, or None for a model exported without one."""
        if not meta:
            return None
        return cls(means=np.asarray(meta["means"], dtype=np.float32),
                   precision=np.asarray(meta["precision"], dtype=np.float32),
                   threshold=float(meta["threshold"]), keep=float(meta["keep"]))


def fit_scope(train_features: np.ndarray, train_labels: np.ndarray, valid_features: np.ndarray,
              keep: float = DEFAULT_KEEP) -> ScopeDetector:
    """Class means and shared covariance of the training photos; a threshold keeping `keep` of the validation ones."""
    train_features = np.asarray(train_features, dtype=np.float64)
    train_labels = np.asarray(train_labels)
    classes = np.unique(train_labels)
    means = np.stack([train_features[train_labels == c].mean(axis=0) for c in classes])
    centred = train_features - means[np.searchsorted(classes, train_labels)]
    # Ledoit-Wolf shrinkage: a small dataset has fewer photos than feature dimensions, where the plain covariance
    # is singular and its inverse meaningless; with thousands of photos the shrinkage is slight.
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    detector = ScopeDetector(means=means.astype(np.float32), precision=precision.astype(np.float32),
                             threshold=-np.inf, keep=keep)
    valid_scores = detector.scores(valid_features)
    detector.threshold = float(np.quantile(valid_scores, 1 - keep)) if len(valid_scores) else -np.inf
    return detector


def feature_forward(model: nn.Module, size: int, n_classes: int, device=None):
    """The forward that gives [logits | features]: the serving runtime on a CPU (OpenVINO: many times faster than
    PyTorch there, and the same numbers serving will compare against), PyTorch on a GPU."""
    from .runtimes import make_forward, torch_forward

    net = WithFeatures(model).eval()
    device = device or next(model.parameters()).device
    if device.type != "cpu":
        forward = torch_forward(net)
        return lambda batch: forward(batch.to(device)).cpu()
    return make_forward(net, size, "auto", n_classes=n_classes)[1]


def image_features(forward, paths, size: int, mean, std, n_classes: int, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features of image files through `forward`, preprocessed as serving does."""
    outputs = []
    batches = range(0, len(paths), FEATURE_BATCH)
    for start in progress(batches) if progress else batches:
        batch = to_batch([open_image(p) for p in paths[start:start + FEATURE_BATCH]], size, mean, std)
        outputs.append(forward(batch).float().numpy())
    combined = np.concatenate(outputs) if outputs else np.zeros((0, n_classes), dtype=np.float32)
    return combined[:, :n_classes], combined[:, n_classes:]
