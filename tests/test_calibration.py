"""Temperature scaling recovers a known over-confidence; ECE and the not-sure threshold behave."""
import numpy as np
import pytest
import torch

from training.calibration import (
    TEMPERATURE_RANGE,
    bake_temperature,
    expected_calibration_error,
    fit_temperature,
    unsure_threshold,
)


def sample(n=4000, classes=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(n, classes, generator=generator) * 2
    targets = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=generator).squeeze(1)
    return true_logits, targets


def test_fit_temperature_recovers_overconfidence():
    true_logits, targets = sample()
    assert abs(fit_temperature(true_logits * 2.5, targets) - 2.5) < 0.25
    assert abs(fit_temperature(true_logits, targets) - 1.0) < 0.1


def test_fit_temperature_stays_finite_on_small_validation_splits():
    """A smoke run's 12 validation photos once made the fit return NaN, and the exported model answered NaN."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(3).repeat(4)
    for trial in range(200):
        logits = torch.randn(12, 3, generator=generator) * torch.rand(1, generator=generator) * 3
        if trial % 2:  # separable: the likelihood keeps rising as T falls
            logits[torch.arange(12), targets] += 1 + torch.rand(1, generator=generator) * 5
        temperature = fit_temperature(logits, targets)
        assert TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1], (trial, temperature)
    separable = torch.nn.functional.one_hot(targets, 3).float() * 4
    assert fit_temperature(separable, targets) < 0.5  # sharpened: the NLL is flat (about 0) below that


def test_calibration_lowers_ece():
    true_logits, targets = sample()
    overconfident = torch.softmax(true_logits * 3, 1).numpy()
    temperature = fit_temperature(true_logits * 3, targets)
    calibrated = torch.softmax(true_logits * 3 / temperature, 1).numpy()
    labels = targets.numpy()
    assert expected_calibration_error(calibrated, labels) < expected_calibration_error(overconfident, labels) / 2


def test_unsure_threshold_marks_where_accuracy_drops():
    probs = np.array([[0.95, 0.05]] * 90 + [[0.55, 0.45]] * 10)
    targets = np.array([0] * 90 + [1] * 10)  # the 10 low-confidence ones are all wrong
    assert unsure_threshold(probs, targets) == 0.6  # the bin (0.5, 0.6] is wrong every time
    assert unsure_threshold(probs[:90], targets[:90]) == 0.9  # all right: the floor is the lowest populated bin


def test_baking_equals_dividing_logits():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(5, 4)
    expected = model(x) / 1.7
    bake_temperature(model, 1.7)
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_a_model_holding_nan_is_refused_before_export():
    from training.finish import refuse_non_finite
    from training.runstate import RunError

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    logits = torch.randn(5, 3)
    refuse_non_finite(model, logits)
    with pytest.raises(RunError, match="validation logits"):
        refuse_non_finite(model, logits / torch.tensor(float("nan")))
    model[1].running_var[0] = float("inf")
    with pytest.raises(RunError, match="1.running_var"):
        refuse_non_finite(model, logits)
