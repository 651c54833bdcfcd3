"""Request ids on every answer and log line, and logs as text or as one JSON object per line (GUITARS_LOG_FORMAT)."""
from __future__ import annotations

import json
import logging
import os
import re
import uuid

from flask import Flask, g, has_request_context, request

REQUEST_ID = "X-Request-ID"
# A caller's id is kept only if it is short and plain, so it can't forge log lines or fill them.
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
APP_LOGGERS = ("webapp", "training")


def request_id() -> str:
    """The current request's id, or "-" outside a request."""
    return g.get("request_id", "-") if has_request_context() else "-"


class RequestIdFilter(logging.Filter):
    """Stamp each record with the id of the request it was logged in."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "request_id": getattr(record, "request_id", "-"), "message": record.getMessage()}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for GUITARS_LOG_FORMAT (text or json)."""
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] [%(request_id)s] %(name)s: %(message)s")


def _assign_id():
    given = request.headers.get(REQUEST_ID, "")
    g.request_id = given if VALID_ID.fullmatch(given) else uuid.uuid4().hex


def _return_id(response):
    response.headers[REQUEST_ID] = g.get("request_id", "-")
    return response


def init_app(app: Flask) -> None:
    """Give every request an id (the caller's, or a new one), return it, and log the app's records with it."""
    app.before_request(_assign_id)
    app.after_request(_return_id)
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(app.config["LOG_FORMAT"]))
    handler.addFilter(RequestIdFilter())
    for name in APP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RequestIdFilter) for h in logger.handlers for f in h.filters):
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def gunicorn_json_logger():
    """gunicorn's logger, writing each access line as one JSON object (for GUITARS_LOG_FORMAT=json)."""
    from gunicorn.glogging import Logger

    class JsonAccessLogger(Logger):
        def setup(self, cfg):
            super().setup(cfg)
            for handler in self.error_log.handlers:
                handler.setFormatter(JsonFormatter())
            for handler in self.access_log.handlers:
                handler.setFormatter(logging.Formatter("%(message)s"))

        def access(self, resp, req, environ, request_time):
            if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.syslog):
                return
            atoms = self.atoms(resp, req, environ, request_time)
            self.access_log.info(json.dumps({
                "time": atoms["t"], "level": "INFO", "logger": "gunicorn.access", "worker": os.getpid(),
                "request_id": atoms.get("{x-request-id}o", "-"), "remote": atoms["h"], "request": atoms["r"],
                "status": atoms["s"], "bytes": atoms["B"], "seconds": request_time.total_seconds(),
                "user_agent": atoms["a"]}))

    return JsonAccessLogger
