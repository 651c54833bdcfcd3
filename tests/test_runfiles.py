"""The run directory's schema: what the trainer writes is what the model page and the API read."""
import json
import shutil

import pytest

from training.inference import ModelLoadError, Predictor
from training.runfiles import REPORT, SCHEMA_VERSION, RunFileError, read_report
from webapp import create_app


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
