"""The fast serving runtimes (OpenVINO, ONNX Runtime) give the same answers as the learner's own PyTorch model."""
import logging
import statistics
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from tests.helpers import FakeClock
from training import runtimes
from training.devices import cpu_has_native_bf16
from training.imaging import open_image
from training.inference import Predictor
from training.openset import WithFeatures
from training.runtimes import (
    BF16_CONFIDENT,
    BF16_MAX_PROBABILITY_DIFFERENCE,
    BF16_SCOPE_MARGIN,
    FAST_PROBE_EVERY,
    GuardedForward,
    RuntimeUnavailable,
    agreement,
    make_forward,
    torch_forward,
)

needs_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")


class NotExportable(torch.nn.Module):
    """A model using an operator that has no ONNX equivalent."""

    def forward(self, x):
        return torch.special.zeta(x.mean((2, 3)).abs() + 2, torch.tensor(2.0)).repeat(1, 4)


@pytest.fixture(scope="module")
def plain(trained_run):
    return Predictor.load(trained_run, runtime="torch")


@pytest.fixture(scope="module")
def images(demo_data):
    return [open_image(p) for p in sorted(demo_data.rglob("*.jpg"))]


@pytest.fixture
def native_bf16(monkeypatch):
    """Make the runtimes believe the CPU does (True) or does not (False) have native bf16; returns the setter."""
    def set_native(native: bool) -> None:
        monkeypatch.setattr(runtimes, "cpu_has_native_bf16", lambda: native)
    return set_native


@needs_bf16
def test_auto_picks_openvino_bf16_where_the_cpu_has_native_bf16(trained_run):
    assert Predictor.load(trained_run).runtime == "openvino-bf16"


@pytest.mark.skipif(cpu_has_native_bf16(), reason="this CPU has native bf16, where auto picks openvino-bf16")
def test_auto_picks_openvino_fp32_without_native_bf16(trained_run):
    assert Predictor.load(trained_run).runtime == "openvino"


@pytest.mark.parametrize("native, expected", [(True, "openvino-bf16"), (False, "openvino")])
def test_auto_takes_bf16_exactly_when_the_cpu_check_says_native(trained_run, native_bf16, native, expected):
    native_bf16(native)  # either CPU, on any machine (without native bf16, OpenVINO computes the bf16 pass in f32)
    assert Predictor.load(trained_run).runtime == expected


def test_required_bf16_is_refused_on_a_cpu_without_native_bf16(trained_run, native_bf16):
    from training.inference import ModelLoadError

    native_bf16(False)
    with pytest.raises(ModelLoadError, match="openvino-bf16 runtime: .*no native bf16, where bf16 would be slower"):
        Predictor.load(trained_run, runtime="openvino-bf16")


def test_exact_auto_leaves_out_bf16_for_figures_served_fp32_answers_are_compared_with(plain, native_bf16):
    native_bf16(True)
    net = WithFeatures(plain.learn.model).eval()
    assert make_forward(net, plain.size, n_classes=len(plain.classes))[0] == "openvino-bf16"
    assert make_forward(net, plain.size, n_classes=len(plain.classes), exact=True)[0] == "openvino"


@pytest.mark.parametrize("runtime", ["openvino", "onnx"])
def test_fast_runtime_agrees_with_torch(trained_run, plain, images, runtime):
    fast = Predictor.load(trained_run, runtime=runtime)
    assert fast.runtime == runtime
    expected, got = plain.probabilities(images), fast.probabilities(images)
    assert np.abs(got - expected).max() < 1e-3
    assert (got.argmax(1) == expected.argmax(1)).all()
    # One image at a time (as a single request sends it) gives what the batch gave.
    assert np.abs(fast.probabilities(images[:1])[0] - got[0]).max() < 1e-5
    # Concurrent requests from a worker's threads each get their own answer.
    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(lambda image: fast.probabilities([image])[0], images))
    assert np.abs(np.stack(rows) - got).max() < 1e-5


@needs_bf16
def test_bf16_runtime_keeps_every_top1(trained_run, plain, images):
    fast = Predictor.load(trained_run, runtime="openvino-bf16")
    expected, got = plain.probabilities(images), fast.probabilities(images)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() <= BF16_MAX_PROBABILITY_DIFFERENCE
    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(lambda image: fast.probabilities([image])[0], images))
    assert np.abs(np.stack(rows) - got).max() < 1e-5


def test_guard_recomputes_exactly_the_unconfident_rows():
    # Top probabilities: about 0.999, 0.5, 0.9999 and just under 0.99.
    logits = torch.tensor([[8.0, 0.0, 1.0], [2.0, 2.0, -9.0], [0.0, 0.0, 10.0], [0.0, 4.5, -9.0]])
    assert torch.softmax(logits, 1).amax(1)[3] < BF16_CONFIDENT
    calls = []

    def exact(batch):
        calls.append(len(batch))
        return batch.mean((2, 3))

    def fast(batch):  # off by a small error everywhere, as bf16 is
        return exact(batch) + torch.tensor([0.25, 0.0, 0.0])

    batch = logits[:, :, None, None].expand(-1, -1, 2, 2).clone()
    got = GuardedForward(fast, exact)(batch)
    assert calls == [len(logits), 2]  # the fast pass did every row, the exact pass only the two unsure ones
    torch.testing.assert_close(got[[1, 3]], logits[[1, 3]])
    torch.testing.assert_close(got[[0, 2]], logits[[0, 2]] + torch.tensor([0.25, 0.0, 0.0]))


def test_guard_also_recomputes_the_rows_its_close_call_marks():
    logits = torch.tensor([[9.0, 0.0, 0.0, 5.0], [9.0, 0.0, 0.0, -0.3]])  # both confident; the last column a score
    batch = logits[:, :, None, None].expand(-1, -1, 2, 2).clone()

    def exact(rows):
        return rows.mean((2, 3))

    def fast(rows):
        return exact(rows) + torch.tensor([0.0, 0.0, 0.0, 0.5])  # a small error in the score only

    def near_zero(output):  # say the decision is "score >= 0"; bf16 could flip it within 1 of the line
        return output[:, 3].abs() < 1.0

    got = GuardedForward(fast, exact, n_classes=3, close_call=near_zero)(batch)
    torch.testing.assert_close(got[0], logits[0] + torch.tensor([0.0, 0.0, 0.0, 0.5]))  # far from the line: kept
    torch.testing.assert_close(got[1], logits[1])


def test_guard_goes_exact_first_while_most_photos_need_it_and_back_when_they_dont():
    sure, unsure = torch.tensor([[9.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.8, 0.0]])
    clock, calls = FakeClock(), []

    def costing(name: str, seconds_a_row: float):
        def forward(batch):
            clock.advance(seconds_a_row * len(batch))
            calls.append(name)
            return batch.mean((2, 3))
        return forward

    # fp32 takes about twice bf16's time; a fake clock, so a loaded machine cannot reorder the two
    guard = GuardedForward(costing("fast", 0.005), costing("exact", 0.010), clock=clock)
    as_batch = lambda logits: logits[:, :, None, None].expand(-1, -1, 2, 2).clone()  # noqa: E731
    for _ in range(20):  # hard photos only: after a few, the fast pass is skipped
        torch.testing.assert_close(guard(as_batch(unsure)), unsure)
    assert guard.exact_first() and calls[-3:] == ["exact"] * 3
    assert statistics.median(guard.timings["fast"]) == pytest.approx(0.005)  # the pass's time, read off the clock
    calls.clear()
    for _ in range(2 * FAST_PROBE_EVERY):  # easy photos again: bf16 first, once the running share has fallen
        guard(as_batch(sure))
    assert not guard.exact_first() and calls[-3:] == ["fast"] * 3


@needs_bf16
def test_bf16_leaves_a_scope_decision_it_could_get_wrong_to_fp32(trained_run, images):
    fast, exact = Predictor.load(trained_run, runtime="openvino-bf16"), Predictor.load(trained_run, runtime="openvino")
    fast._forward.confident = 0.0  # the smoke model is never sure: count every bf16 answer as sure, so bf16 keeps it
    fast.scope.threshold = -np.inf  # nothing is near the line: every photo keeps its bf16 score
    fast_scores = fast.outputs(images)[1]
    exact_scores = np.array(exact.outputs(images)[1])
    shift = np.abs(np.array(fast_scores) - exact_scores)
    # The margin is twice the largest shift bf16 caused on real photos; this tiny model's shifts can be larger.
    kept = shift < BF16_SCOPE_MARGIN
    worst = int(np.where(kept, shift, 0).argmax())
    assert kept[worst] and shift[worst] > 0  # bf16 kept this photo and moved its score
    # A threshold between the two scores: bf16 alone would decide this photo the other way from fp32.
    fast.scope.threshold = exact.scope.threshold = (fast_scores[worst] + exact_scores[worst]) / 2
    answers = fast.predict(images), exact.predict(images)
    assert [a.in_scope for a in answers[0]] == [a.in_scope for a in answers[1]]
    assert answers[0][worst].scope_score == pytest.approx(exact_scores[worst], abs=1e-4)


def test_agreement_detects_a_different_model(plain):
    n = len(plain.classes)  # the served output is [logits | features]; agreement compares the probabilities
    same = agreement(torch_forward(WithFeatures(plain.model)), plain._forward, plain.size, n_classes=n)
    other = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))
    assert same == 0.0
    assert agreement(torch_forward(other), plain._forward, plain.size, n_classes=n) > 0.01


def test_unexportable_model_falls_back_to_torch_or_fails_when_a_runtime_is_required(caplog):
    name, forward = make_forward(NotExportable(), 8)
    assert name == "torch" and forward(torch.ones(1, 3, 8, 8)).shape == (1, 12)
    assert "serving with PyTorch" in caplog.text
    for runtime in ("openvino-bf16", "openvino", "onnx"):
        with pytest.raises(RuntimeUnavailable, match="zeta"):
            make_forward(NotExportable(), 8, runtime=runtime)
    with pytest.raises(ValueError, match="unknown runtime"):
        make_forward(NotExportable(), 8, runtime="tensorrt")


def test_a_required_runtime_that_cannot_run_is_a_load_error(trained_run, monkeypatch, caplog):
    from training.inference import ModelLoadError

    def broken(*args, **kwargs):  # each runtime's builder takes its own arguments; this one fails as a missing plugin
        raise RuntimeError("no CPU plugin")

    monkeypatch.setitem(runtimes.BUILDERS, "openvino", broken)
    monkeypatch.setitem(runtimes.BUILDERS, "openvino-bf16", broken)
    for runtime in ("openvino", "openvino-bf16"):
        with pytest.raises(ModelLoadError, match=f"{runtime} runtime: {runtime} cannot run this model: no CPU plugin"):
            Predictor.load(trained_run, runtime=runtime)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=runtimes.__name__):
        assert Predictor.load(trained_run).runtime == "onnx"  # auto moves on to the next runtime
    passed_over = [r.getMessage() for r in caplog.records if r.name == runtimes.__name__]
    assert passed_over == [f"not serving with {name}: RuntimeError: no CPU plugin" for name in ("openvino-bf16", "openvino")]
