"""bench/RESULTS.md is generated whole: each table with its CPU class, ours with the precision it used, notes kept."""
import pytest

from bench.report import NOTES_BEGIN, NOTES_END, render

MACHINE = {"cpu": "Some CPU", "cores": 2}


def level(concurrency: int, rate: float) -> dict:
    return {"concurrency": concurrency, "images_per_s": rate, "p50_ms": 20.0, "p95_ms": 30.0, "p99_ms": 40.0,
            "errors": 0, "server_p50_ms": {"decode": 1.0, "model": 10.0}}


def serve_figures(cpu_class: str) -> dict:
    apps = {"ours": {"top1": ["a"], "levels": [level(1, 40.0)]}, "baseline": {"top1": ["a"], "levels": [level(1, 10.0)]}}
    return {**MACHINE, "cpu_class": cpu_class, "model": "runs/x", "images": "data", "ood": None, "blend": None,
            "workers": 2, "served_runtime": "openvino", "bare_forward_ms": {"openvino": 15.0}, "p50_c1_over_bare": 1.3,
            "mixes": {"photos": {"requests_from": 1, "apps": apps, "top1_identical": True, "throughput_ratio": {1: 4.0}}}}


def train_figures(cpu_class: str, precision: str) -> dict:
    stages = [{"stage": "frozen-160", "size": 160, "images_per_s": 50.0, "accuracy": 0.5}]
    pipeline = {"stages": stages, "train_images": 10, "valid_images": 3}
    return {**MACHINE, "cpu_class": cpu_class, "recipe": "cpu", "data": "data", "per_class": 5, "backbone": "lite2",
            "sizes": [160], "ours": {**pipeline, "precision": precision}, "baseline": {**pipeline, "precision": "fp32"},
            "speedup": [2.5]}


@pytest.mark.parametrize("cpu_class, precision", [("AVX2-only", "fp32"), ("AVX-512 bf16", "bf16"), ("AMX", "bf16")])
def test_every_table_states_the_cpu_class_and_ours_the_precision_it_used(cpu_class, precision):
    text = render(serve_figures(cpu_class), train_figures(cpu_class, precision), "python -m bench.report")
    tables = sum(line.startswith("| --- |") for line in text.splitlines())
    assert tables == 2 and text.count(f"CPU class: **{cpu_class}**") == tables
    assert ("bf16 autocast" in text) == (precision == "bf16")
    assert f"| ours | {precision} | frozen-160 |" in text and "| baseline | fp32 | frozen-160 |" in text
    if precision == "fp32":
        assert "in fp32" in text and "no native bf16" in text


def test_a_rerun_rewrites_the_figures_and_keeps_only_the_notes():
    notes = f"{NOTES_BEGIN}\n## Notes\n\n- why the blend is slow: measured by hand\n{NOTES_END}\n"
    previous = "# Benchmark results\n\nan old table | 1 |\n\n" + notes
    text = render(serve_figures("AMX"), train_figures("AMX", "bf16"), "python -m bench.report", previous)
    assert "an old table" not in text
    assert text.endswith(notes) and text.count(NOTES_BEGIN) == 1
    again = render(serve_figures("AMX"), train_figures("AMX", "bf16"), "python -m bench.report", text)
    assert again == text  # stable: nothing accumulates from one run to the next
    assert render(serve_figures("AMX"), train_figures("AMX", "bf16"), "cmd").endswith(f"{NOTES_END}\n")


def test_a_section_not_measured_says_so_and_has_no_table():
    text = render(None, train_figures("AMX", "bf16"), "python -m bench.report")
    assert "## Serving\n\nNot measured by this version of the scripts yet" in text
    assert sum(line.startswith("| --- |") for line in text.splitlines()) == 1
