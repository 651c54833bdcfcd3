"""The served model: loaded once per worker, swapped whole when its file changes, never half-loaded."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from flask import current_app

from training.inference import ModelLoadError, Predictor
from training.runfiles import REPORT, model_file

from .metrics import record_model

log = logging.getLogger(__name__)
EXTENSION = "guitars_model"  # the holder's key in app.extensions; read it through model_holder()


class ModelHolder:
    """Loads the configured model lazily; reloads it, off the request path, when `export.pkl` or `report.json` changes."""

    check_every = 2.0
    clock = staticmethod(time.monotonic)  # injectable: tests step it instead of sleeping

    def __init__(self, path: str | Path, runtime: str = "auto", tta: bool = False):
        # The path comes from configuration only; requests can never choose what is unpickled.
        self.path = model_file(path)
        self.runtime = runtime
        self.tta = tta
        self._predictor: Predictor | None = None
        self._stamp = None
        self._error: str | None = None
        self._checked = 0.0
        self._attempted = False
        self._lock = threading.Lock()
        self._loading: threading.Thread | None = None

    def _file_stamp(self):
        stamps = []
        for path in (self.path, self.path.with_name(REPORT)):
            try:
                stat = path.stat()
            except OSError:
                stamps.append(None)
            else:
                stamps.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
        return tuple(stamps)

    def _load(self) -> None:
        # A model is the pair export.pkl + report.json. The stamp is taken before reading, so a pair caught
        # between its two writes (a SHA mismatch, refused) is read again once the second write lands.
        stamp = self._file_stamp()
        started = time.perf_counter()
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
            record_model(predictor.sha256, predictor.runtime, time.perf_counter() - started)
            log.info("loaded model %s (sha256 %s, %s, %s runtime)", self.path, predictor.sha256,
                     predictor.meta.get("backbone"), predictor.runtime)
        self._stamp, self._attempted = stamp, True
        self._checked = self.clock()

    def _reload_in_background(self) -> None:
        """Load the changed files on a thread of its own, at low priority: requests keep the old model meanwhile."""
        def run():
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # Linux: the nice value is per thread
            except OSError:
                pass
            try:
                self._load()
            finally:
                self._loading = None

        self._loading = threading.Thread(target=run, name="model-reload", daemon=True)
        self._loading.start()

    def get(self) -> Predictor | None:
        """The current predictor, or None when no model could be loaded; a changed file is loaded off this path."""
        if not self._attempted:
            with self._lock:
                if not self._attempted:  # the first load: nothing to serve until it is done
                    self._load()
        elif self.clock() - self._checked > self.check_every and self._loading is None:
            with self._lock:
                if self.clock() - self._checked > self.check_every and self._loading is None:
                    self._checked = self.clock()
                    if self._file_stamp() != self._stamp:
                        self._reload_in_background()
        return self._predictor

    def wait_for_reload(self, timeout: float | None = None) -> None:
        """Block until a reload in progress has finished (for tests and tools)."""
        loading = self._loading
        if loading is not None:
            loading.join(timeout)

    @property
    def error(self) -> str | None:
        """Why the model is not (or not the newest) loaded, for the log: it names server paths."""
        return self._error

    @property
    def public_error(self) -> str | None:
        """`error` as clients may see it: the server's folders cut down to the run directory's name."""
        if self._error is None:
            return None
        return self._error.replace(str(self.path.parent), self.path.parent.name)


def model_holder() -> ModelHolder:
    """The current app's model holder (as flaskr's `get_db()` is its database)."""
    return current_app.extensions[EXTENSION]
