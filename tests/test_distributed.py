"""A real two-process distributed smoke training on CPU (gloo) through `accelerate launch`."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT
from training.inference import Predictor
from training.learner import build_model
from training.runfiles import read_report

# Loaded into every process of the launch (a sitecustomize on PYTHONPATH): logs each file a process creates, opens
# for writing or renames under WRITES_UNDER, to WRITES_LOG/rank-<RANK>.txt.
WRITE_AUDIT = '''
import os, sys
_under = os.environ["WRITES_UNDER"]
_log = open(os.path.join(os.environ["WRITES_LOG"], "rank-" + os.environ.get("RANK", "launcher") + ".txt"), "a")
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _audit(event, args):
    if event == "open" and not isinstance(args[0], int):
        mode, flags = args[1], args[2]
        paths = [args[0]] if (any(c in mode for c in "wax+") if mode else flags & _WRITING) else []
    elif event == "os.rename":
        paths = args[:2]
    else:
        return
    for path in paths:
        if os.path.abspath(os.fsdecode(path)).startswith(_under):
            _log.write(event + " " + os.fsdecode(path) + "\\n")
            _log.flush()

sys.addaudithook(_audit)
'''


def small_batch_smoke(path: Path) -> Path:
    """The smoke recipe at batch size 4: at 16, each rank's 15 training photos made no whole batch, so no step."""
    path.write_text((ROOT / "training" / "recipes" / "smoke.toml").read_text().replace("bs = 16", "bs = 4"))
    return path


@pytest.mark.slow
def test_accelerate_two_processes_train_together_and_only_rank_0_writes(demo_data, trained_run, tmp_path):
    out, audit, logs = tmp_path / "dist", tmp_path / "audit", tmp_path / "writes"
    audit.mkdir()
    logs.mkdir()
    (audit / "sitecustomize.py").write_text(WRITE_AUDIT)
    env = {**os.environ, "PYTHONPATH": f"{audit}:{ROOT}", "WRITES_UNDER": str(out),
           "WRITES_LOG": str(logs)}
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run(
        # --multi_gpu picks torch's elastic launcher; on a machine without CUDA the processes use gloo on the CPU.
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "training", "train", "--data", str(demo_data),
         "--recipe", str(small_batch_smoke(tmp_path / "smoke.toml")), "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stdout
    assert result.stdout.count("Exported") == 1  # only rank 0 prints

    # Both ranks trained every stage, on equal shares (rank 1's count reaches rank 0's log through gloo).
    shares = re.findall(r"2 processes trained (\d+) \+ (\d+) batches", result.stdout)
    assert len(shares) == 2 and all(int(a) == int(b) > 0 for a, b in shares), result.stdout

    # Only rank 0 wrote into the run directory.
    written = {rank.stem: rank.read_text().splitlines() for rank in logs.glob("rank-*.txt")}
    assert {"rank-0", "rank-1"} <= set(written)
    assert written["rank-1"] == []
    assert any(line.endswith("/export.pkl") for line in written["rank-0"])

    distributed, single = Predictor.load(out), Predictor.load(trained_run)
    assert type(distributed.learn) is type(single.learn) and type(distributed.model) is type(single.model)
    assert distributed.classes == single.classes and distributed.size == single.size
    report = read_report(out)
    assert set(report) == set(read_report(trained_run))
    assert json.loads((out / "split.json").read_text()) == json.loads((trained_run / "split.json").read_text())

    # The steps changed the body: its weights are no longer the ImageNet ones it started from.
    start = build_model("efficientnet_lite0", len(single.classes), pretrained=True).body.state_dict()
    trained = distributed.model.body.state_dict()
    moved = [name for name, tensor in start.items() if tensor.is_floating_point() and not torch.equal(tensor, trained[name])]
    assert len(moved) > len(start) / 2
