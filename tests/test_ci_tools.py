"""Under CI a browser or proxy that cannot be installed fails the job; elsewhere its tests are skipped with the reason."""
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.fixture
def failing_apt(tmp_path):
    """A PATH whose apt-get fails as on a CI runner without the mirror (and without /usr/sbin, where nginx lives)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text("#!/bin/sh\necho 'E: simulated: no mirror' >&2\nexit 100\n")
    (fake / "apt-get").chmod(0o755)
    return f"{fake}:/usr/bin:/bin"


@pytest.mark.parametrize("target", ["browser", "proxy", "postgres"])
@pytest.mark.parametrize("ci, status", [("true", 2), ("", 0)])
def test_make_fails_for_a_tool_it_cannot_install_only_under_ci(failing_apt, tmp_path, target, ci, status):
    env = {**os.environ, "PATH": failing_apt, "CI": ci, "CHROMIUM": str(tmp_path / "none"), "NGINX": str(tmp_path / "none"),
           "PG_BIN": str(tmp_path / "none")}
    result = subprocess.run(["make", "--no-print-directory", target], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == status, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert "could not be installed" in said and ("failing" if ci else "will be skipped") in said


@pytest.mark.parametrize("ci, outcome", [("true", "error"), ("", "skipped")])  # setup fails: pytest says error
def test_a_browser_test_without_chromium_fails_under_ci_and_is_skipped_elsewhere(tmp_path, ci, outcome):
    env = {**os.environ, "CI": ci, "CHROMIUM": str(tmp_path / "none")}
    result = subprocess.run([sys.executable, "-m", "pytest", "tests/test_browser.py", "-q", "-rfs", "-p", "no:cacheprovider"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1]
    assert f" {outcome}" in summary and ("passed" not in summary), result.stdout[-2000:]
    assert result.returncode == (1 if ci else 0)
    assert "Debian chromium is not installed (make browser)" in result.stdout


@pytest.mark.parametrize("ci, outcome", [("true", "error"), ("", "skipped")])
def test_a_postgres_test_without_the_server_fails_under_ci_and_is_skipped_elsewhere(tmp_path, ci, outcome):
    env = {**os.environ, "CI": ci, "PG_BIN": str(tmp_path / "none")}
    result = subprocess.run([sys.executable, "-m", "pytest", "tests/test_postgres.py", "-q", "-rfs", "-k", "migration",
                             "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1]
    assert f" {outcome}" in summary and ("passed" not in summary), result.stdout[-2000:]
    assert result.returncode == (1 if ci else 0)
    assert "(make postgres)" in result.stdout
