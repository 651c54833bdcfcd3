"""Shared fixtures: a small drawn dataset, one real smoke training run, and the Flask app around it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, SMOKE_CLASSES, gunicorn_server
from training.demo import make_demo_dataset

# Skip reasons naming the make target that installs a test's tool. Under CI that target has run, so such a skip
# means the install failed, and the job must fail rather than pass without the test.
TOOL_TARGETS = ("(make browser)", "(make proxy)", "(make postgres)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (CI=true), a test skipped for a missing browser or proxy is reported failed, with the reason."""
    report = (yield).get_result()
    if os.environ.get("CI") != "true" or not report.skipped or not isinstance(report.longrepr, tuple):
        return
    reason = report.longrepr[2]
    if any(target in reason for target in TOOL_TARGETS):
        report.outcome, report.longrepr = "failed", f"CI=true, so a missing tool is a failure: {reason}"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep fingerprint caches out of the user's home, and answers and photos out of the checkout."""
    os.environ["GUITARS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    # An app built from the environment (create_app(), gunicorn) keeps its answers and photos here, not in instance/.
    instance = tmp_path_factory.mktemp("instance")
    os.environ.setdefault("GUITARS_DATABASE_URL", f"sqlite:///{instance / 'guitars.db'}")
    os.environ.setdefault("GUITARS_FEEDBACK_DIR", str(instance / "feedback"))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """Three classes of drawn guitars, 14 photos each."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), per_class=14, size=96, classes=SMOKE_CLASSES,
                             progress=False)


@pytest.fixture(scope="session")
def trained_run(demo_data, tmp_path_factory) -> Path:
    """A real `flask train --recipe smoke` run, shared by the tests that only read its outputs."""
    from webapp import create_app

    out = tmp_path_factory.mktemp("runs") / "smoke"
    runner = create_app({"TESTING": True}).test_cli_runner()
    result = runner.invoke(args=["train", "--data", str(demo_data), "--recipe", "smoke", "--out", str(out),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def logged_run(demo_data, tmp_path_factory):
    """A second smoke run, trained by `python -m training train` with its output going to a pipe, as in a log file."""
    out = tmp_path_factory.mktemp("runs") / "logged"
    result = subprocess.run([sys.executable, "-m", "training", "train", "--data", str(demo_data), "--recipe", "smoke",
                             "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.fixture(scope="session")
def app(trained_run):
    """One app (and one model load) for every test that only reads from it."""
    from webapp import create_app

    return create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "WTF_CSRF_ENABLED": False})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def server(trained_run, tmp_path):
    """gunicorn with the smoke model on a free loopback port; yields (url, master process, its TMPDIR)."""
    tmpdir = tmp_path / "server-tmp"
    tmpdir.mkdir()
    with gunicorn_server(str(trained_run), ROOT, tmp_path / "gunicorn.log", TMPDIR=str(tmpdir)) as (url, proc):
        yield url, proc, tmpdir


@pytest.fixture
def make_run_server(trained_run, tmp_path):
    """gunicorn started the way `make run` starts it: a model path relative to the operator's working directory.

    With GUITARS_SCREENSHOTS set it serves `make run`'s own demo model from the checkout, for the README's pictures.
    """
    if os.environ.get("GUITARS_SCREENSHOTS"):
        if not (ROOT / "runs" / "demo" / "export.pkl").is_file():
            pytest.fail("GUITARS_SCREENSHOTS needs make run's model: run `make demo` first")
        site = ROOT
    else:
        site = tmp_path / "site"
        (site / "runs").mkdir(parents=True)
        (site / "runs" / "demo").symlink_to(trained_run, target_is_directory=True)
    with gunicorn_server("runs/demo", site, tmp_path / "gunicorn.log") as (url, _):
        yield url
