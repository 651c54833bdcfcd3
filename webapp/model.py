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
from training.versions import POINTER, VersionError, served_model

from .metrics import record_model

log = logging.getLogger(__name__)
EXTENSION = "guitars_model"  # the holder's key in app.extensions; read it through model_holder()


class ModelHolder:
    """Loads the configured model lazily; reloads it, off the request path, when `export.pkl` or `report.json` changes,
    or, serving a models folder, when its pointer names another run."""

    check_every = 2.0
    clock = staticmethod(time.monotonic)  # injectable: tests step it instead of sleeping

    def __init__(self, path: str | Path, runtime: str = "auto", tta: bool = False, models: str | Path | None = None):
        # The path comes from configuration only; requests can never choose what is unpickled.
        self.path = model_file(path)
        self.models = None if models is None else Path(models)  # set: the run its pointer names, not `path`
        self.runtime = runtime
        self.tta = tta
        self._predictor: Predictor | None = None
        self._stamp = None
        self._error: str | None = None
        self._checked = 0.0
        self._attempted = False
        self._lock = threading.Lock()
        self._loading: threading.Thread | None = None

    def _target(self) -> tuple[tuple, Path | None, str | None, str | None]:
        """What to serve, read as one: (the files' stamps, export.pkl, the SHA-256 it was promoted with, why there
        is nothing to serve). With a models folder its pointer decides (resolved by training.versions)."""
        if self.models is None:
            return self._stamps(self.path, self.path.with_name(REPORT)), self.path, None, None
        pointer = self._stamps(self.models / POINTER)  # before reading it: a newer pointer is seen at the next check
        try:
            path, version = served_model(self.models)
        except VersionError as exc:
            return pointer, None, None, str(exc)
        return pointer + self._stamps(path, path.with_name(REPORT)), path, version.sha256, None

    @staticmethod
    def _stamps(*paths: Path) -> tuple:
        """(inode, mtime, size) of each file, None for a missing one: any change is a model to load."""
        stamps = []
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                stamps.append(None)
            else:
                stamps.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
        return tuple(stamps)

    def _load(self, beside_requests: bool = False) -> None:
        # A model is the pair export.pkl + report.json. The stamp is taken before reading, so a pair caught
        # between its two writes (a SHA mismatch, refused) is read again once the second write lands.
        stamp, path, promoted_sha, problem = self._target()
        started = time.perf_counter()
        try:
            if problem:  # nothing promoted, or an unreadable pointer: kept as any failed load is
                raise ModelLoadError(problem)
            self.path = path
            # Beside requests, the GIL-bound graph export runs in a child process, not on this worker's threads.
            predictor = Predictor.load(path, runtime=self.runtime, tta=self.tta, export_in_child=beside_requests)
            if promoted_sha and predictor.sha256 != promoted_sha:  # files changed after the gate passed them
                raise ModelLoadError(f"{path.parent} is not the model promoted as {path.parent.name} (its SHA-256 "
                                     f"changed since): promote it again, or roll back")
        except ModelLoadError as exc:
            self._error = str(exc)
            if self._predictor is None:
                log.error("model not loaded: %s", exc)
            else:
                log.error("keeping the previous model; the new file failed to load: %s", exc)
        else:
            self._predictor, self._error = predictor, None  # one reference swap: readers see old or new
            record_model(predictor.sha256, self.version(predictor), predictor.runtime,
                         time.perf_counter() - started)
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
                self._load(beside_requests=True)
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
                    if self._target()[0] != self._stamp:
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
        public = self._error if self.models is None else self._error.replace(str(self.models), self.models.name)
        return public.replace(str(self.path.parent), self.path.parent.name)

    def version(self, predictor: Predictor) -> str | None:
        """The run name `predictor` was promoted as, when a models folder is served; None for a configured file."""
        return None if self.models is None else predictor.path.parent.name


def model_holder() -> ModelHolder:
    """The current app's model holder (as flaskr's `get_db()` is its database)."""
    return current_app.extensions[EXTENSION]
