"""A real PostgreSQL server for the tests: initdb and pg_ctl into a temporary folder, listening on a unix socket only."""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

# Debian's `postgresql` package (make postgres) puts the server's programs here.
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "guitars"


def available() -> bool:
    return all((PG_BIN / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))


@contextlib.contextmanager
def postgres_server():
    """Start a throw-away server; yield a function that makes a fresh database on it and returns its URL."""
    # Not under pytest's tmp_path: that is private to root, and as root the server must run as another user.
    folder = Path(tempfile.mkdtemp(prefix="guitars-pg."))
    run_as = {}
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(folder, "postgres", "postgres")
        run_as = {"user": "postgres", "group": "postgres"}
    data, log = folder / "data", folder / "server.log"

    def run(*args):
        result = subprocess.run([str(PG_BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=120,
                                **run_as)
        assert result.returncode == 0, f"{args[0]} failed: {result.stderr}{log.read_text() if log.exists() else ''}"

    run("initdb", "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
    # No TCP at all, fsync off (the data are thrown away), the socket in our own folder.
    run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
        "-o", f"-c listen_addresses='' -k {folder} -F")
    names = (f"guitars_{n}" for n in itertools.count())

    def new_database() -> str:
        name = next(names)
        with psycopg.connect(host=str(folder), user=USER, dbname="postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{USER}@/{name}?host={folder}"

    try:
        yield new_database
    finally:
        subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60, **run_as)
        shutil.rmtree(folder, ignore_errors=True)
