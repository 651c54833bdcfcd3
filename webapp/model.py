"""The served model: loaded once per worker, swapped whole when its file changes, never half-loaded."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from training.inference import ModelLoadError, Predictor, resolve_model_path

log = logging.getLogger(__name__)


class ModelHolder:
    """Lazily loads the configured model; reloads it when the file's mtime changes (checked every few seconds)."""

    check_every = 2.0

    def __init__(self, path: str | Path, runtime: str = "auto", tta: bool = False):
        # The path comes from configuration only; requests can never choose what is unpickled.
        self.path = resolve_model_path(path)
        self.runtime = runtime
        self.tta = tta
        self._predictor: Predictor | None = None
        self._stamp = None
        self._error: str | None = None
        self._checked = 0.0
        self._attempted = False
        self._lock = threading.Lock()

    def _file_stamp(self):
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def _load(self) -> None:
        stamp = self._file_stamp()
        try:
            predictor = Predictor.load(self.path, runtime=self.runtime, tta=self.tta)
        except ModelLoadError as exc:
            self._error = str(exc)
            if self._predictor is None:
                log.error("model not loaded: %s", exc)
            else:
                log.error("keeping the previous model; the new file failed to load: %s", exc)
        else:
            self._predictor, self._error = predictor, None  # one reference swap: readers see old or new
            log.info("loaded model %s (%s, %s runtime)", self.path, predictor.meta.get("backbone"), predictor.runtime)
        self._stamp, self._attempted = stamp, True
        self._checked = time.monotonic()

    def get(self) -> Predictor | None:
        """The current predictor (reloading if the file changed), or None when no model could be loaded."""
        if not self._attempted or time.monotonic() - self._checked > self.check_every:
            with self._lock:
                if not self._attempted:
                    self._load()
                elif time.monotonic() - self._checked > self.check_every:
                    self._checked = time.monotonic()
                    if self._file_stamp() != self._stamp:
                        self._load()
        return self._predictor

    def reload(self) -> None:
        """Load the file again now (SIGHUP handler)."""
        with self._lock:
            self._load()

    @property
    def error(self) -> str | None:
        """Why the model is not (or not the newest) loaded."""
        return self._error
