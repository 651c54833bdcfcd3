"""The ONNX Runtime fast path gives the same answers as the learner's own PyTorch model."""
import numpy as np
import pytest
import torch

from training.imaging import open_image
from training.inference import Predictor
from training.runtimes import RuntimeUnavailable, agreement, make_forward, torch_forward


class NotExportable(torch.nn.Module):
    """A model using an operator that has no ONNX equivalent."""

    def forward(self, x):
        return torch.special.zeta(x.mean((2, 3)).abs() + 2, torch.tensor(2.0)).repeat(1, 4)


def test_onnx_is_the_default_and_agrees_with_torch(trained_run, demo_data):
    fast, plain = Predictor.load(trained_run), Predictor.load(trained_run, runtime="torch")
    assert (fast.runtime, plain.runtime) == ("onnx", "torch")
    images = [open_image(p) for p in sorted(demo_data.rglob("*.jpg"))]
    expected, got = plain.probabilities(images), fast.probabilities(images)
    assert np.abs(got - expected).max() < 1e-3
    assert (got.argmax(1) == expected.argmax(1)).all()
    # One image at a time (as a single request) gives what the batch gave.
    assert np.abs(fast.probabilities(images[:1])[0] - got[0]).max() < 1e-5


def test_agreement_detects_a_different_model(trained_run):
    predictor = Predictor.load(trained_run, runtime="torch")
    same = agreement(torch_forward(predictor.model), predictor._forward, predictor.size)
    other = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))
    assert same == 0.0
    assert agreement(torch_forward(other), predictor._forward, predictor.size) > 0.01


def test_unexportable_model_falls_back_to_torch_or_fails_when_onnx_is_required(caplog):
    name, forward = make_forward(NotExportable(), 8)
    assert name == "torch" and forward(torch.ones(1, 3, 8, 8)).shape == (1, 12)
    assert "serving with PyTorch" in caplog.text
    with pytest.raises(RuntimeUnavailable, match="zeta"):
        make_forward(NotExportable(), 8, runtime="onnx")
    with pytest.raises(ValueError, match="unknown runtime"):
        make_forward(NotExportable(), 8, runtime="tensorrt")
