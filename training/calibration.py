"""Make shown probabilities mean what they say: temperature scaling, calibration error, and the not-sure threshold."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature T in TEMPERATURE_RANGE minimising the NLL of softmax(logits / T) (Guo et al., 2017)."""
    logits, targets = logits.detach().double(), targets.detach().long()

    def nll(log_t: float) -> float:
        return float(nn.functional.cross_entropy(logits / np.exp(log_t), targets))

    # A bounded search, because an unbounded step (LBFGS) ran off to NaN on small, separable validation splits.
    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded")
    return float(np.exp(result.x))


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """Weighted gap between confidence and accuracy over equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return float(error)


CONFIDENCE_EDGES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def unsure_threshold(probs: np.ndarray, targets: np.ndarray, target_accuracy: float = 0.9,
                     min_count: int = 5) -> float:
    """Upper edge of the most confident bin whose accuracy is under `target_accuracy` (else the lowest populated edge)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    populated = []
    for low, high in zip(CONFIDENCE_EDGES[:-1], CONFIDENCE_EDGES[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.sum() >= min_count:
            populated.append((low, high, correct[in_bin].mean()))
    weak = [high for low, high, accuracy in populated if accuracy < target_accuracy]
    if weak:
        return float(max(weak))
    return float(min((low for low, _, _ in populated), default=0.5))


def bake_temperature(model: nn.Module, temperature: float) -> None:
    """Divide the last linear layer by T, so every path (our server and `learn.predict`) gives calibrated outputs."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.div_(temperature)
        if last.bias is not None:
            last.bias.div_(temperature)
