"""The exported graph and OpenVINO's compiled model are cached per model, never confused, and never required."""
import numpy as np
import pytest
import torch

from training import graphs
from training.devices import cpu_has_native_bf16
from training.graphs import cached_onnx_bytes, export_in_child, graph_cache_dir, graph_key, onnx_bytes
from training.inference import Predictor
from training.runtimes import _compiled_forward, _openvino_core


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GUITARS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "graphs"


def test_a_graph_is_exported_once_per_model_and_read_back(cache):
    model = tiny_model()
    graph = cached_onnx_bytes(model, 16)
    assert graph == onnx_bytes(model, 16)
    (saved,) = cache.glob("*.onnx")
    stamp = saved.stat().st_mtime_ns
    assert cached_onnx_bytes(model, 16) == graph and saved.stat().st_mtime_ns == stamp
    with torch.no_grad():
        model[0].bias += 1  # other weights: another graph
    assert cached_onnx_bytes(model, 16) != graph and len(list(cache.glob("*.onnx"))) == 2
    assert cached_onnx_bytes(model, 24) != graph  # another input size: another graph


def test_a_model_exported_in_a_child_is_read_from_the_cache_without_exporting_here(cache, trained_run, monkeypatch):
    predictor = Predictor.load(trained_run, runtime="torch")
    model, size = predictor.served, predictor.size
    assert not list(cache.glob(f"{graph_key(model, size)}-*.onnx"))
    monkeypatch.setattr(graphs, "onnx_bytes", lambda *_: pytest.fail("exported in this process"))
    graph = cached_onnx_bytes(model, size, lambda: export_in_child(trained_run))
    assert [p.read_bytes() for p in cache.glob(f"{graph_key(model, size)}-*.onnx")] == [graph]


def test_a_failed_child_export_costs_the_export_here(cache, caplog):
    model = tiny_model()
    graph = cached_onnx_bytes(model, 16, lambda: export_in_child("/no/such/run"))
    assert graph == onnx_bytes(model, 16) and len(list(cache.glob("*.onnx"))) == 1
    assert "the child export failed" in caplog.text and "/no/such/run" in caplog.text


def test_a_damaged_cached_graph_is_exported_again(cache):
    model = tiny_model()
    graph = cached_onnx_bytes(model, 16)
    (saved,) = cache.glob("*.onnx")
    saved.write_bytes(graph[: len(graph) // 2])
    assert cached_onnx_bytes(model, 16) == graph
    assert [p.read_bytes() for p in cache.glob("*.onnx")] == [graph]


def test_an_unusable_cache_only_costs_the_export(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("GUITARS_CACHE", str(blocker))
    model = tiny_model()
    assert cached_onnx_bytes(model, 16) == onnx_bytes(model, 16)
    core = _openvino_core()
    batch = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(_compiled_forward(core, core.read_model(onnx_bytes(model, 16)), 1, "f32")(batch),
                               model(batch), rtol=1e-4, atol=1e-4)
    assert "cannot cache the exported graph" in caplog.text and "without OpenVINO's cache" in caplog.text


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="without native bf16, OpenVINO computes a bf16 request in f32")
def test_compiled_model_cache_keeps_each_precision_apart(cache):
    core = _openvino_core()
    model = core.read_model(cached_onnx_bytes(tiny_model(), 32))
    batch = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for attempt in range(2):  # the first compile of each precision fills the cache, the second reads from it
        for precision in ("bf16", "f32"):
            outputs[precision, attempt] = _compiled_forward(core, model, 1, precision)(batch).numpy()
    assert any((graph_cache_dir() / "openvino").iterdir())
    for precision in ("bf16", "f32"):
        np.testing.assert_array_equal(outputs[precision, 0], outputs[precision, 1])
    assert np.abs(outputs["bf16", 1] - outputs["f32", 1]).max() > 0  # so the check above could tell them apart
