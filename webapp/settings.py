"""Settings from GUITARS_* environment variables, with defaults that work for `make run`."""
from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from training.decoding import MAX_PIXELS
from training.runtimes import RUNTIMES

MEGABYTE = 1024 * 1024


def _env_number(env, name: str, default, kind=int):
    """A GUITARS_* number, or `default` when unset; a clear error when it is not a number."""
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a {kind.__name__}, got {raw!r}") from None


def _env_probability(env, name: str) -> float | None:
    """A GUITARS_* probability from 0 to 1 (0 is a value: never), or None when unset."""
    value = _env_number(env, name, None, float)
    if value is not None and not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability from 0 to 1, got {env.get(name)!r}")
    return value


def _env_choice(env, name: str, choices: tuple[str, ...]) -> str:
    """A GUITARS_* value from `choices` (the first when unset)."""
    raw = env.get(name) or choices[0]
    if raw not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def development_secret(instance_dir: Path) -> str:
    """A random key generated once into the instance folder, so every worker signs forms alike."""
    path = instance_dir / "secret_key"
    if not path.exists():
        instance_dir.mkdir(parents=True, exist_ok=True)
        # Written whole to a private temporary file, then linked into place: link() fails if another worker got
        # there first, and nobody can ever read a half-written (or empty) key.
        fd, tmp = tempfile.mkstemp(prefix=".secret_key.", dir=instance_dir)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass  # another worker won the race; its key is complete
        finally:
            os.unlink(tmp)
    return path.read_text().strip()


def load_settings(env, instance_dir: Path | None = None) -> dict:
    """Flask config keys from an environment mapping (defaults for what it lacks).

    Without an instance folder (tests), a missing secret key is a fresh random one, written nowhere.
    """
    secret = env.get("GUITARS_SECRET_KEY")
    if not secret and instance_dir is None:
        secret = secrets.token_hex(32)
    return {
        # Absolute from here on: Flask resolves relative paths against the app's folder, not the operator's.
        "MODEL_PATH": str(Path(env.get("GUITARS_MODEL") or "runs/demo").expanduser().absolute()),
        # Set, it wins over MODEL_PATH: the run its pointer names is served (training/versions.py).
        "MODELS_DIR": str(Path(env["GUITARS_MODELS"]).expanduser().absolute()) if env.get("GUITARS_MODELS") else None,
        "RUNTIME": _env_choice(env, "GUITARS_RUNTIME", RUNTIMES),
        "TTA": _env_choice(env, "GUITARS_TTA", ("off", "flip")),
        "TOP_K": _env_number(env, "GUITARS_TOP_K", 3),
        "MAX_FILES": _env_number(env, "GUITARS_MAX_FILES", 8),
        "MAX_CONTENT_LENGTH": int(_env_number(env, "GUITARS_MAX_UPLOAD_MB", 20, float) * MEGABYTE),
        "MAX_PIXELS": _env_number(env, "GUITARS_MAX_PIXELS", MAX_PIXELS),
        "MAX_REQUEST_PIXELS": _env_number(env, "GUITARS_MAX_REQUEST_PIXELS", 100_000_000),
        # Decoding runs in child processes (webapp/decoders.py): a few per worker, each capped in memory, and all
        # files of a request within one deadline, well inside nginx's proxy_read_timeout.
        "DECODERS": _env_number(env, "GUITARS_DECODERS", 2),
        "DECODE_SECONDS": _env_number(env, "GUITARS_DECODE_SECONDS", 4.0, float),
        "DECODE_MEMORY_MB": _env_number(env, "GUITARS_DECODE_MEMORY_MB", 1024),
        # None: the model's own line. 0 is a line too: never "not sure".
        "UNSURE_BELOW": _env_probability(env, "GUITARS_UNSURE_BELOW"),
        "RATE_LIMIT_PER_MINUTE": _env_number(env, "GUITARS_RATE_LIMIT", 0),
        "LOG_FORMAT": _env_choice(env, "GUITARS_LOG_FORMAT", ("text", "json")),
        "PROXY_HOPS": _env_number(env, "GUITARS_PROXY_HOPS", 0),
        "SECRET_KEY": secret or development_secret(instance_dir),
        # The review page (webapp/review.py) exists only when both are set; `flask review` sets them itself.
        "REVIEW_DATA": env.get("GUITARS_REVIEW_DATA") or None,
        "REVIEW_TOKEN": env.get("GUITARS_REVIEW_TOKEN") or None,
        # Accepted "none of these" feedback photos go to its feedback/ (webapp/feedback_review.py); unset: DATA-ood.
        "FEEDBACK_OOD": env.get("GUITARS_FEEDBACK_OOD") or None,
        # Answers and verdicts (webapp/db.py). Without an instance folder (tests): a database in memory.
        "DATABASE_URL": env.get("GUITARS_DATABASE_URL")
        or (f"sqlite:///{instance_dir / 'guitars.db'}" if instance_dir else "sqlite://"),
        "ANSWER_LOG_MAX_ROWS": _env_number(env, "GUITARS_ANSWER_LOG_MAX_ROWS", 100_000),
        # Photos shared with consent (webapp/photostore.py); without a folder, no photo is ever kept.
        "FEEDBACK_DIR": env.get("GUITARS_FEEDBACK_DIR") or (str(instance_dir / "feedback") if instance_dir else None),
        "FEEDBACK_MAX_MB": _env_number(env, "GUITARS_FEEDBACK_MAX_MB", 200, float),
        "FEEDBACK_RETENTION_DAYS": _env_number(env, "GUITARS_FEEDBACK_RETENTION_DAYS", 90, float),
        # The monitor's drift warning (webapp/monitor.py): a share at DRIFT_RATIO x its validation rate, or a class
        # mix this far (total variation) from training's, over at least DRIFT_MIN_ANSWERS answers.
        "DRIFT_RATIO": _env_number(env, "GUITARS_DRIFT_RATIO", 3.0, float),
        "DRIFT_MIN_ANSWERS": _env_number(env, "GUITARS_DRIFT_MIN_ANSWERS", 50),
        "DRIFT_CLASS_DISTANCE": _env_number(env, "GUITARS_DRIFT_CLASS_DISTANCE", 0.3, float),
    }
