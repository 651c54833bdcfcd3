"""A real two-process distributed smoke training on CPU (gloo) through `accelerate launch`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.inference import Predictor


@pytest.mark.slow
def test_accelerate_two_processes_export_the_same_kind_of_learner(demo_data, trained_run, tmp_path):
    out = tmp_path / "dist"
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run(
        # --multi_gpu picks torch's elastic launcher; on a machine without CUDA the processes use gloo on the CPU.
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "training", "train", "--data", str(demo_data), "--recipe", "smoke",
         "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stdout
    assert result.stdout.count("Exported") == 1  # only rank 0 prints and writes
    distributed, single = Predictor.load(out), Predictor.load(trained_run)
    assert type(distributed.learn) is type(single.learn) and type(distributed.model) is type(single.model)
    assert distributed.classes == single.classes and distributed.size == single.size
    report = json.loads((out / "report.json").read_text())
    assert set(report) == set(json.loads((trained_run / "report.json").read_text()))
    assert json.loads((out / "split.json").read_text()) == json.loads((trained_run / "split.json").read_text())
