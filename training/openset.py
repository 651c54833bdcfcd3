"""Is a photo one of the classes at all? A detector fitted on the training photos' features, shipped in the model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

from .batches import forward_files, image_batches

# Share of in-scope validation photos the threshold keeps; the rest of what scores lower is "not one of my classes".
DEFAULT_KEEP = 0.95
FEATURE_BATCH = 32
IMAGENET_CLASSES = 1000
CHECK_STATS = (0.5, 0.5, 0.5)  # EfficientNet-Lite's input normalisation (mean = std = 0.5)
CHECK_SIZE = 224  # Lite0's own input size: larger inputs are scaled down first (the check then costs about half)
# The check's sure reading of something else: an ImageNet class the training photos are read as at least this often
# (at the same sureness) is theirs ("electric guitar"), and never counts against a photo.
THEIR_READING = 0.05
VETO_BUDGET = 0.01  # at most this share of the validation photos may be turned away by the check's reading alone
VETO_PENALTY = 1000.0  # subtracted from the score of a photo the check is sure is something else: far below any line
SEEN_AS_LINE = 0.5  # the check's reading is named ("it looks like a banjo") from this probability up


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The model up to its penultimate features, and its last layer (the class logits)."""
    *features, last = list(model.head)
    return nn.Sequential(model.body, *features), last


class ImageNetCheck(nn.Module):
    """A second opinion from an ImageNet classifier that was never fine-tuned: its 1000 logits for a batch normalised
    the way the model's backbone wants (it renormalises to its own statistics first)."""

    def __init__(self, mean, std):
        super().__init__()
        from .backbones import load_lite_classifier

        self.classifier = load_lite_classifier(0)
        # x_check = (x * std + mean - 0.5) / 0.5, one multiply-add per channel
        scale = torch.tensor(std) / torch.tensor(CHECK_STATS)
        shift = (torch.tensor(mean) - torch.tensor(CHECK_STATS)) / torch.tensor(CHECK_STATS)
        self.register_buffer("scale", scale.view(1, 3, 1, 1))
        self.register_buffer("shift", shift.view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > CHECK_SIZE:
            x = torch.nn.functional.interpolate(x, size=(CHECK_SIZE, CHECK_SIZE), mode="bilinear", align_corners=False)
        return self.classifier(x * self.scale + self.shift)


class ImageNetProfile(nn.Module):
    """log sum_c p(c | x) w_c: how much the check's ImageNet reading of a photo is like its reading of the training
    photos (w: their mean ImageNet probabilities), as one number per photo."""

    def __init__(self, check: ImageNetCheck, weights: np.ndarray):
        super().__init__()
        self.check = check
        self.register_buffer("weights", torch.as_tensor(np.asarray(weights, dtype=np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.softmax(self.check(x), dim=1) @ self.weights + PROFILE_FLOOR)[:, None]


PROFILE_FLOOR = 1e-12  # keeps the log finite for a photo the check gives no weight to


class WithFeatures(nn.Module):
    """The classifier answering logits and penultimate features in one pass, as one tensor: [logits | features],
    followed by one column per extra head (the ImageNet profile when serving, the check's logits when fitting)."""

    def __init__(self, model: nn.Module, *extra: nn.Module):
        super().__init__()
        self.features, self.last = split_head(model)
        self.extra = nn.ModuleList(extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return torch.cat([self.last(features), features, *(head(x) for head in self.extra)], dim=1)


@dataclass
class ScopeDetector:
    """Mahalanobis distance to the nearest class mean of the training photos' penultimate features, under one shared
    covariance (Lee et al., 2018), its negative as the score: higher = more like the training photos.

    With `profile_weights`, the score is the sum of two standardised scores: that one, and the ImageNet profile
    (`ImageNetProfile`), which tells other instruments and everyday photos apart from the training photos far better
    than features fine-tuned on the classes alone (docs/experiments.md)."""

    means: np.ndarray       # (classes, D)
    precision: np.ndarray   # (D, D), the inverse of the shared covariance
    threshold: float        # scores below it are out of scope
    keep: float             # the share of in-scope validation photos the threshold was chosen to keep
    profile_weights: np.ndarray | None = None  # (1000,) the training photos' mean ImageNet probabilities
    standardise: tuple[float, float, float, float] | None = None  # validation mean and std of both scores
    normalise: bool = False  # features scaled to unit length first (Mahalanobis++); False in older exports
    # The check's sure reading (probability >= sure_line) of an ImageNet class not in `theirs` puts a photo out of
    # scope whatever its features say; None in older exports, which serve the profile alone.
    sure_line: float | None = None
    theirs: np.ndarray | None = None  # (1000,) bool: the classes the training photos are sure-read as
    kin: tuple[int, ...] = ()  # ImageNet classes of the classes' kind: an out-of-scope photo read so is "a guitar"

    @property
    def method(self) -> str:
        base = "l2-mahalanobis" if self.normalise else "mahalanobis"  # l2: Mahalanobis++
        if self.profile_weights is None:
            return base
        return base + ("+imagenet" if self.sure_line is None else "+imagenet+reading")

    @property
    def reads_imagenet(self) -> bool:
        """Whether the detector scores from the check's 1000 logits (else from the ImageNet profile alone)."""
        return self.sure_line is not None

    def __post_init__(self):
        # precision = L Lᵀ, so the distance is a plain Euclidean one after projecting by L: one matrix product
        # per batch instead of one quadratic form per class and photo (docs/experiments.md, "Figures behind code").
        self._project = np.linalg.cholesky(self.precision.astype(np.float64)).astype(np.float32)
        projected_means = self.means @ self._project
        self._projected_means, self._mean_norms = projected_means, (projected_means ** 2).sum(axis=1)

    def mahalanobis(self, features: np.ndarray) -> np.ndarray:
        """Negative squared Mahalanobis distance of each row to its nearest class mean."""
        features = np.asarray(features, dtype=np.float32)
        if len(features) == 0:
            return np.zeros(0, dtype=np.float32)
        if self.normalise:
            features = unit_length(features)
        projected = features @ self._project
        distances = ((projected ** 2).sum(axis=1, keepdims=True) - 2 * projected @ self._projected_means.T
                     + self._mean_norms[None, :])
        return -distances.min(axis=1)

    def scores(self, features: np.ndarray, profile: np.ndarray | None = None,
               imagenet: np.ndarray | None = None) -> np.ndarray:
        """Each photo's scope score (higher = more like the training photos), from its features and the check's
        logits (`imagenet`), or for an older export its ImageNet profile."""
        mahalanobis = self.mahalanobis(features)
        if self.profile_weights is None:
            return mahalanobis
        if imagenet is not None:
            profile = profile_scores(imagenet, self.profile_weights)
        m_mean, m_std, p_mean, p_std = self.standardise
        scores = (mahalanobis - m_mean) / m_std + (np.asarray(profile, dtype=np.float32) - p_mean) / p_std
        if imagenet is not None and self.sure_line is not None:
            scores = scores - VETO_PENALTY * self.sure_of_other(imagenet)
        return scores

    def sure_of_other(self, imagenet: np.ndarray) -> np.ndarray:
        """Whether the check is sure each photo is something the training photos are not (a banjo, an acoustic)."""
        return sure_of_other(softmax(imagenet), self.theirs, self.sure_line)

    def near_sure_line(self, imagenet: np.ndarray, margin: float) -> np.ndarray:
        """Rows whose most likely reading of something else is within `margin` of the sure line."""
        return np.abs(other_reading(softmax(imagenet), self.theirs) - self.sure_line) < margin

    def seen_as(self, imagenet: np.ndarray) -> list[tuple[int, float] | None]:
        """The check's reading of each photo, (ImageNet class, probability), where it is at least SEEN_AS_LINE."""
        probabilities = softmax(imagenet)
        top = probabilities.argmax(axis=1)
        return [(int(c), float(p)) if p >= SEEN_AS_LINE else None for c, p in zip(top, probabilities.max(axis=1))]

    def in_scope(self, scores: np.ndarray) -> np.ndarray:
        """Which scores are in scope."""
        return np.asarray(scores) >= self.threshold

    def to_meta(self) -> dict:
        """Plain data for `learn.meta` (pickled inside export.pkl, so the SHA-256 check covers it)."""
        return {"method": self.method, "means": self.means, "precision": self.precision,
                "threshold": self.threshold, "keep": self.keep, "profile_weights": self.profile_weights,
                "standardise": self.standardise, "normalise": self.normalise, "sure_line": self.sure_line,
                "theirs": self.theirs, "kin": list(self.kin)}

    @classmethod
    def from_meta(cls, meta: dict | None) -> ScopeDetector | None:
        """The detector stored in a model's metadata, or None for a model exported without one."""
        if not meta:
            return None
        weights = meta.get("profile_weights")
        return cls(means=np.asarray(meta["means"], dtype=np.float32),
                   precision=np.asarray(meta["precision"], dtype=np.float32),
                   threshold=float(meta["threshold"]), keep=float(meta["keep"]),
                   profile_weights=None if weights is None else np.asarray(weights, dtype=np.float32),
                   standardise=None if meta.get("standardise") is None else tuple(meta["standardise"]),
                   normalise=bool(meta.get("normalise", False)),
                   sure_line=None if meta.get("sure_line") is None else float(meta["sure_line"]),
                   theirs=None if meta.get("theirs") is None else np.asarray(meta["theirs"], dtype=bool),
                   kin=tuple(int(c) for c in meta.get("kin") or ()))


def imagenet_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in the check's logit order."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def unit_length(features: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (Mahalanobis++, Mueller & Hein 2025: the feature norm varies with the photo,
    not the class, and skews the shared covariance)."""
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-8).astype(features.dtype)


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def profile_scores(imagenet_logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`ImageNetProfile` on precomputed ImageNet logits."""
    return np.log(softmax(imagenet_logits) @ weights + PROFILE_FLOOR).astype(np.float32)


def other_reading(probabilities: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Each row's highest ImageNet probability outside `theirs`."""
    return np.where(theirs[None, :], 0.0, probabilities).max(axis=1)


def sure_of_other(probabilities: np.ndarray, theirs: np.ndarray, sure_line: float) -> np.ndarray:
    """Rows whose most likely ImageNet class outside `theirs` has a probability of at least `sure_line`."""
    return other_reading(probabilities, theirs) >= sure_line


def fit_reading(train_imagenet: np.ndarray, valid_imagenet: np.ndarray,
                budget: float = VETO_BUDGET) -> tuple[float, np.ndarray] | None:
    """The lowest sureness line at which the check's reading of something else turns away at most `budget` of the
    validation photos, and the classes that are theirs at that line; None where no line up to 0.999 does."""
    train, valid = softmax(train_imagenet), softmax(valid_imagenet)
    for line in np.r_[np.arange(0.5, 0.99, 0.01), 0.99, 0.995, 0.999]:
        theirs = (train >= line).mean(axis=0) >= THEIR_READING
        if sure_of_other(valid, theirs, line).mean() <= budget:
            return round(float(line), 3), theirs
    return None


def fit_scope(train_features: np.ndarray, train_labels: np.ndarray, valid_features: np.ndarray,
              keep: float = DEFAULT_KEEP, train_imagenet: np.ndarray | None = None,
              valid_imagenet: np.ndarray | None = None, normalise: bool = False, reading: bool = False,
              kin: tuple[int, ...] = ()) -> ScopeDetector:
    """Class means and shared covariance of the training photos; a threshold keeping `keep` of the validation ones.

    With the ImageNet check's logits of both sets, the detector adds the ImageNet profile to the score, and with
    `reading`, the check's sure reading of something else (`fit_reading`); with `normalise`, the features are
    scaled to unit length before both the fit and every score (Mahalanobis++). `kin`: ImageNet classes of the
    classes' kind (DATA/classes.toml's [kind]), to which those the training photos are read as are added."""
    train_features = np.asarray(train_features, dtype=np.float64)
    if normalise:
        train_features = unit_length(train_features)
    train_labels = np.asarray(train_labels)
    classes = np.unique(train_labels)
    means = np.stack([train_features[train_labels == c].mean(axis=0) for c in classes])
    centred = train_features - means[np.searchsorted(classes, train_labels)]
    # Ledoit-Wolf shrinkage: a small dataset has fewer photos than feature dimensions, where the plain covariance
    # is singular and its inverse meaningless; with thousands of photos the shrinkage is slight.
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    detector = ScopeDetector(means=means.astype(np.float32), precision=precision.astype(np.float32),
                             threshold=-np.inf, keep=keep, normalise=normalise)
    valid_profile = None
    if train_imagenet is not None and len(valid_features):
        weights = softmax(train_imagenet).mean(axis=0)
        valid_mahalanobis, valid_profile = detector.mahalanobis(valid_features), profile_scores(valid_imagenet, weights)
        detector.profile_weights = weights.astype(np.float32)
        detector.standardise = (float(valid_mahalanobis.mean()), float(valid_mahalanobis.std()) or 1.0,
                                float(valid_profile.mean()), float(valid_profile.std()) or 1.0)
        fitted = fit_reading(train_imagenet, valid_imagenet) if reading else None
        if fitted is not None:
            detector.sure_line, detector.theirs = fitted
            if kin:  # without a kind given, no answer is "a guitar" (or "a dog"), only "none of them"
                detector.kin = tuple(sorted(set(kin) | set(np.flatnonzero(detector.theirs).tolist())))
    valid_scores = detector.scores(valid_features, valid_profile,
                                   valid_imagenet if detector.reads_imagenet else None)
    detector.threshold = float(np.quantile(valid_scores, 1 - keep)) if len(valid_scores) else -np.inf
    return detector


def feature_forward(model: nn.Module, size: int, n_classes: int, device=None, check: ImageNetCheck | None = None,
                    exact: bool = False):
    """The forward that gives [logits | features] (then the check's ImageNet logits, if given): the serving runtime
    on a CPU (OpenVINO: many times faster than PyTorch there; fp32 only if `exact`), PyTorch on a GPU."""
    from .runtimes import make_forward, torch_forward

    net = WithFeatures(model, *([check] if check is not None else [])).eval()
    if check is not None:
        check.to(next(model.parameters()).device)
    device = device or next(model.parameters()).device
    if device.type != "cpu":
        forward = torch_forward(net)
        return lambda batch: forward(batch.to(device)).cpu()
    return make_forward(net, size, "auto", n_classes=n_classes, exact=exact)[1]


def image_features(forward, paths, size: int, mean, std, n_classes: int,
                   progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features of image files through `forward`, preprocessed as serving does."""
    combined = forward_files(forward, paths, FEATURE_BATCH, size, mean, std, progress, desc="Scope features")
    if not len(combined):
        combined = np.zeros((0, n_classes), dtype=np.float32)
    return combined[:, :n_classes], combined[:, n_classes:]


def closeup_features(forward, paths, size: int, mean, std, progress: bool = False, seed: int = 0) -> np.ndarray:
    """`forward`'s output rows for one random close-up of each image (training.views.CloseUp, as training draws
    them), the same close-ups every time: so the detector knows a headstock or a bridge of its classes."""
    import random

    from fastai.vision.core import PILImage

    from .imaging import to_batch
    from .views import CloseUp

    close_up, state = CloseUp(p=1.0), random.getstate()
    random.seed(seed)  # CloseUp draws from the random module
    try:
        rows = [forward(to_batch([close_up.encodes(PILImage(img)) for img in images], size, mean, std)).float().numpy()
                for _, images in image_batches(paths, FEATURE_BATCH, progress=progress, desc="Scope close-ups")]
    finally:
        random.setstate(state)
    return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)
