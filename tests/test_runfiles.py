"""The run directory's schema: what the trainer writes is what the model page and the API read; the model file
alone decides the answers; the split and the state go through runfiles."""
import json
import logging
import shutil

import numpy as np
import pytest
from fastai.learner import load_learner

from tests.helpers import upload, without_ids
from training.fsutil import sha256_file
from training.inference import ModelLoadError, Predictor
from training.runfiles import (
    EXPORT,
    REPORT,
    SCHEMA_VERSION,
    RunFileError,
    RunState,
    Split,
    SplitRow,
    StageRecord,
    read_report,
    read_split,
    read_state,
    validation_paths,
    write_report,
    write_split,
    write_state,
)
from webapp import create_app
from webapp.settings import load_settings

# What an answer depends on, as /api/v1/model gives it.
DECISION = ("classes", "names", "temperature", "unsure_below", "scope", "sources")


def test_the_model_page_and_api_render_the_report_the_trainer_wrote(trained_run):
    report = read_report(trained_run)
    assert report["schema_version"] == SCHEMA_VERSION
    client = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch"}).test_client()
    model = client.get("/api/v1/model").json
    validation = report["validation"]
    for key in ("accuracy", "macro_f1", "n", "per_class", "confusion_matrix", "most_confused"):
        assert model["validation"][key] == validation[key], key
    assert model["classes"] == report["classes"] and model["backbone"] == report["backbone"]
    assert model["unsure_below"] == report["unsure_below"] and model["sha256"] == report["model_sha256"]
    html = client.get("/model").get_data(as_text=True)
    assert f"{validation['accuracy'] * 100:.2f}%" in html and report["weights"] in html
    for stage in report["stages"]:
        assert stage["stage"] in html


def test_a_report_from_before_versioning_still_loads(trained_run, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(trained_run, run)
    report = json.loads((run / REPORT).read_text())
    del report["schema_version"]
    (run / REPORT).write_text(json.dumps(report))
    assert Predictor.load(run, runtime="torch").report["unsure_below"] == report["unsure_below"]


def test_a_report_from_a_newer_version_is_refused_clearly(trained_run, tmp_path):
    run = tmp_path / "new"
    shutil.copytree(trained_run, run)
    report = json.loads((run / REPORT).read_text())
    report["schema_version"] = SCHEMA_VERSION + 1
    (run / REPORT).write_text(json.dumps(report))
    with pytest.raises(RunFileError, match="schema version"):
        read_report(run)
    with pytest.raises(ModelLoadError, match="upgrade it, or re-export"):
        Predictor.load(run, runtime="torch")


def served(run, photos, **config) -> tuple[dict, list[dict]]:
    """`/api/v1/model` and the answers for `photos`, from an app serving `run` with PyTorch."""
    client = create_app({"TESTING": True, "MODEL_PATH": str(run), "RUNTIME": "torch", **config}).test_client()
    answers = []
    for start in range(0, len(photos), 8):
        response = client.post("/api/v1/predict", content_type="multipart/form-data",
                               data={"file": [upload(p.read_bytes(), p.name) for p in photos[start:start + 8]]})
        assert response.status_code == 200, response.json
        answers += without_ids(response.json["results"])
    return client.get("/api/v1/model").json, answers


@pytest.fixture
def photos(demo_data):
    """Every drawn photo."""
    return sorted(demo_data.rglob("*.jpg"))


@pytest.fixture
def line(trained_run, photos) -> float:
    """A "not sure" line with answers on both sides of it, and far from the 0.5 a model without one would use."""
    _, answers = served(trained_run, photos)
    top = sorted(a["predictions"][0]["probability"] for a in answers)
    line = round(float(np.median(top)), 4)
    assert top[0] < line <= top[-1] and abs(line - 0.5) > 1e-3, top
    return line


def export_with_line(source, dest, line: float | None, report_line: float):
    """A copy of run `source` at `dest` whose model carries the "not sure" line `line` (None: none, as models
    exported before it travelled inside them) and whose report says `report_line`."""
    shutil.copytree(source, dest)
    learn = load_learner(dest / EXPORT, cpu=True)
    learn.meta.pop("unsure_below")
    if line is not None:
        learn.meta["unsure_below"] = line
    learn.export(dest / EXPORT)
    write_report(dest, {**read_report(dest), "unsure_below": report_line, "model_sha256": sha256_file(dest / EXPORT)})
    return dest


def test_the_model_file_alone_decides_the_answers(trained_run, tmp_path, photos, line):
    full = export_with_line(trained_run, tmp_path / "full", line, line)
    bare = tmp_path / "bare"
    shutil.copytree(full, bare)
    report = read_report(bare)
    serving = {"classes", "names", "backbone", "size", "calibration", "unsure_below", "scope"}
    assert serving <= set(report)
    write_report(bare, {k: v for k, v in report.items() if k not in serving})  # the SHA-256 and documentation only
    assert not serving & set(read_report(bare))

    model, answers = served(full, photos)
    bare_model, bare_answers = served(bare, photos)
    assert {k: bare_model[k] for k in DECISION} == {k: model[k] for k in DECISION}
    assert bare_answers == answers and len(answers) == 42
    assert model["unsure_below"] == line and model["temperature"] == report["calibration"]["temperature"]
    assert model["sources"] == {"classes": "model", "names": "model", "temperature": "model",
                                "unsure_below": "model", "scope": "model"}
    # Each answer's flag is the model's line applied to its top probability, and the line splits them.
    flags = [a["uncertain"] for a in answers]
    assert flags == [a["predictions"][0]["probability"] < line for a in answers] and len(set(flags)) == 2


def test_the_trainer_puts_the_not_sure_line_in_the_model(trained_run):
    predictor = Predictor.load(trained_run, runtime="torch")
    assert predictor.meta["unsure_below"] == read_report(trained_run)["unsure_below"] == predictor.unsure_below
    assert predictor.sources["unsure_below"] == "model"


def test_the_setting_overrides_the_models_line_and_the_api_says_so(trained_run, tmp_path, photos):
    for raw, uncertain in (("0", False), ("1", True)):  # 0 is a line: never "not sure"
        setting = load_settings({"GUITARS_UNSURE_BELOW": raw}, tmp_path)["UNSURE_BELOW"]
        model, answers = served(trained_run, photos, UNSURE_BELOW=setting)
        assert model["unsure_below"] == float(raw) and model["sources"]["unsure_below"] == "setting"
        assert {a["uncertain"] for a in answers} == {uncertain}


def test_an_export_from_before_the_line_moved_serves_with_its_reports_line(trained_run, tmp_path, photos, line,
                                                                          caplog):
    old = export_with_line(trained_run, tmp_path / "old", None, line)
    with caplog.at_level(logging.WARNING, logger="training.inference"):
        predictor = Predictor.load(old, runtime="torch")
    assert predictor.unsure_below == line and predictor.sources["unsure_below"] == "report"
    assert "exported without its 'not sure' line" in caplog.text
    model, answers = served(old, photos)
    _, current_answers = served(export_with_line(trained_run, tmp_path / "current", line, 0.5), photos)
    assert model["unsure_below"] == line and model["sources"]["unsure_below"] == "report"
    assert answers == current_answers


def test_the_split_is_read_and_written_as_typed_rows(trained_run, tmp_path):
    split = read_split(trained_run)
    assert split.seed == 7 and all(isinstance(row, SplitRow) for row in split.rows)
    assert validation_paths(trained_run) == set(split.paths(valid=True)) and split.paths(valid=False)
    assert sorted(split.paths(valid=True) + split.paths(valid=False)) == sorted(row.path for row in split.rows)
    again = Split(3, 0.5, [SplitRow("a/1.jpg", "a", True), SplitRow("b/2.jpg", "b", False)])
    write_split(tmp_path, again)
    assert read_split(tmp_path) == again
    assert read_split(tmp_path / "nowhere", missing_ok=True) is None
    with pytest.raises(RunFileError, match="split.json does not exist"):
        read_split(tmp_path / "nowhere")
    (tmp_path / "split.json").write_text('{"items": []}')
    with pytest.raises(RunFileError, match="not a split file"):
        read_split(tmp_path)


def test_the_run_state_is_read_through_runfiles(trained_run, tmp_path):
    state = read_state(trained_run)
    assert state.exported is True and len(state.completed) == 2
    assert all(isinstance(record, StageRecord) for record in state.completed)
    assert [record.to_json() for record in state.completed] == read_report(trained_run)["stages"]
    assert read_state(tmp_path) is None
    (tmp_path / "state.json").write_text("{half")
    with pytest.raises(RunFileError, match="state.json is not valid JSON"):
        read_state(tmp_path)


# The keys state.json had when it was a plain dict, and those of each stage in it (lr_found and budget when present).
OLD_STATE_KEYS = {"recipe", "dataset_fingerprint", "pretrained", "completed", "exported", "started"}
OLD_STAGE_KEYS = {"stage", "backbone", "size", "bs", "frozen", "frozen_groups", "train_bn", "lr", "epochs"}


def test_the_run_state_operations_write_the_file_as_before(tmp_path):
    state = RunState(recipe={"name": "r", "stages": []}, dataset_fingerprint="f", pretrained=True, started="now")
    assert set(state.to_json()) == OLD_STATE_KEYS and state.to_json()["completed"] == []
    epochs = [{"epoch": 1, "seconds": 2.0}, {"epoch": 2, "seconds": 3.0}]
    state.mark_running("one", epochs[:1])
    write_state(tmp_path, state)
    assert read_state(tmp_path).to_json()["running"] == {"stage": "one", "seconds": 2.0}
    state.complete_stage(StageRecord("one", "b", 64, 16, True, 0, False, 1e-3, lr_found=1e-3, epochs=epochs))
    assert state.running is None and state.epoch_seconds == 5.0
    state.mark_running("two", epochs[:1])
    state.record_lost_seconds()  # a resumed run: stage two's finished epoch is redone, its time counted
    state.record_lost_seconds()  # only once
    assert state.running is None and state.lost_seconds == 2.0 and state.spent_seconds == 7.0
    state.mark_exported()
    write_state(tmp_path, state)
    stored = json.loads((tmp_path / "state.json").read_text())
    assert set(stored) == OLD_STATE_KEYS | {"lost_seconds"} and stored["exported"] is True
    assert set(stored["completed"][0]) == OLD_STAGE_KEYS | {"lr_found"}
    assert read_state(tmp_path) == state
    (tmp_path / "state.json").write_text('{"completed": []}')
    with pytest.raises(RunFileError, match="not a state file"):
        read_state(tmp_path)


def test_a_run_whose_state_was_written_before_the_types_still_resumes(runner, trained_run, demo_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    first = read_report(trained_run)["stages"][0]
    assert set(first) == OLD_STAGE_KEYS
    # state.json as the plain-dict code wrote it: killed during stage 2, after one finished epoch of it.
    typed = read_state(trained_run)
    (run / "state.json").write_text(json.dumps({
        "recipe": typed.recipe, "dataset_fingerprint": typed.dataset_fingerprint, "pretrained": True,
        "completed": [first], "exported": False, "started": "2026-12-01T22:00:00+00:00",
        "running": {"stage": "unfrozen-64", "seconds": 1.5}}))
    (run / EXPORT).unlink()
    (run / "checkpoints" / "stage-2.pth").unlink()
    result = runner.invoke(args=["train", "--data", str(demo_data), "--recipe", "smoke", "--out", str(run),
                                 "--resume", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "frozen-64: done earlier, skipped" in result.output and "stage 2/2 unfrozen-64" in result.output
    report = read_report(run)
    assert report["stages"][0] == first and report["stages"][1]["stage"] == "unfrozen-64"
    stored = json.loads((run / "state.json").read_text())
    assert stored["exported"] is True and stored["lost_seconds"] == 1.5 and "running" not in stored
    assert stored["started"] == "2026-12-01T22:00:00+00:00" and stored["completed"] == report["stages"]
