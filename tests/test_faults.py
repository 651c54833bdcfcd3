"""Killed training runs resume; a killed export never damages the previous model; bad model files never load."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import elastic_recipe
from training.fsutil import atomic_path
from training.runfiles import read_report
from webapp import create_app


def resume_in_process(command: list[str]) -> str:
    """The killed command again with --resume, through the Flask CLI in this process (it has torch loaded already)."""
    result = create_app({"TESTING": True}).test_cli_runner().invoke(args=[*command[3:], "--resume"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_run_killed_between_stages_resumes_to_the_same_files(demo_data, trained_run, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "training", "train", "--data", str(demo_data), "--recipe", "smoke",
               "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    state = out / "state.json"
    while time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text())["completed"]:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(json.loads(state.read_text())["completed"]) == 1
    assert not (out / "export.pkl").exists()

    resumed = resume_in_process(command)
    assert "done earlier, skipped" in resumed
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert files == sorted(p.name for p in trained_run.iterdir() if not p.name.startswith("."))
    report = read_report(out)
    assert [s["stage"] for s in report["stages"]] == ["frozen-64", "unfrozen-64"]


def test_failed_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "export.pkl"
    target.write_bytes(b"previous model")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a new mod")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["export.pkl"]


def test_atomic_write_gets_the_same_permissions_as_a_plain_write(tmp_path):
    with atomic_path(tmp_path / "export.pkl") as tmp:
        tmp.write_bytes(b"model")
    (tmp_path / "plain").write_bytes(b"model")
    assert (tmp_path / "export.pkl").stat().st_mode == (tmp_path / "plain").stat().st_mode


@pytest.mark.slow
def test_process_killed_during_export_leaves_the_previous_file(tmp_path):
    target = tmp_path / "export.pkl"
    target.write_bytes(b"previous model")
    writer = (
        "import sys, time\n"
        "from training.fsutil import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    with open(tmp, 'wb') as fh:\n"
        "        fh.write(b'partial'); fh.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"previous model"


@pytest.mark.parametrize("content, reason", [
    ("truncated", "not a loadable fastai learner"),
    ("foreign", "not a loadable fastai learner"),
])
def test_bad_model_files_leave_the_app_not_ready(trained_run, tmp_path, content, reason):
    pkl = tmp_path / "export.pkl"
    if content == "truncated":
        data = (trained_run / "export.pkl").read_bytes()
        pkl.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"weights": torch.zeros(3)}, pkl)
    client = create_app({"TESTING": True, "MODEL_PATH": str(pkl), "RUNTIME": "torch"}).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and reason in ready.json["reason"]
    assert client.get("/healthz").status_code == 200


@pytest.mark.slow
def test_resumed_run_counts_the_killed_stages_epochs_against_its_budget(demo_data, tmp_path):
    recipe = elastic_recipe(tmp_path / "elastic.toml", 60, fixed_epochs=3, elastic_epochs="[1, 2]")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "training", "train", "--data", str(demo_data), "--recipe", str(recipe),
               "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path, deadline = out / "state.json", time.monotonic() + 300
    while time.monotonic() < deadline and not (state_path.exists() and "running" in json.loads(state_path.read_text())):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = json.loads(state_path.read_text())
    assert killed["completed"] == [] and killed["running"]["stage"] == "fixed"
    lost = killed["running"]["seconds"]
    assert lost > 0

    resume_in_process(command)
    fixed, elastic = read_report(out)["stages"]
    assert len(fixed["epochs"]) == 3  # the killed stage was redone from its start
    assert elastic["budget"]["lost_seconds"] == pytest.approx(lost)
    assert elastic["budget"]["spent_seconds"] >= sum(e["seconds"] for e in fixed["epochs"]) + lost
    assert "running" not in json.loads(state_path.read_text())
