"""Atomic file writes: a killed process never leaves a half-written file behind."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path

# Read once at import: os.umask can only be read by setting it, which would race with other threads later.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside `target`; on success move it over `target` in one step."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would, so a server
        # running as another user can still read the exported model.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def default_cache_dir() -> Path:
    """Where fingerprints and other derived data are cached (never inside the data folder, which may be read-only)."""
    return Path(os.environ.get("GUITARS_CACHE", Path.home() / ".cache" / "guitar-classifier"))


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike):
    """Hold an exclusive lock on `lock_file` (created if missing) against other processes and threads alike."""
    # Each call opens the file anew, so flock excludes threads of one process as it does other processes.
    with open(lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_json(target: str | os.PathLike, data) -> None:
    """Write `data` as indented JSON atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
