"""Errors as JSON under /api and as friendly pages elsewhere; never a stack trace."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from .service import ModelUnavailable
from .settings import MEGABYTE
from .uploads import UploadError

log = logging.getLogger(__name__)

TITLES = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 413: "Upload too large",
          415: "Not an image we can read", 422: "Image too large", 429: "Too many requests",
          500: "Something went wrong", 503: "Model not ready"}


def wants_json() -> bool:
    """JSON for the API blueprint's routes (health checks included) and for any unknown path under /api/."""
    return request.blueprint == "api" or request.path.startswith("/api/")


def error_response(status: int, code: str, message: str):
    if wants_json():
        return jsonify({"error": {"code": code, "message": message}}), status
    return render_template("error.html", status=status, title=TITLES.get(status, "Error"), message=message), status


def init_app(app: Flask) -> None:
    """Register the handlers."""

    @app.errorhandler(UploadError)
    @app.errorhandler(ModelUnavailable)
    def refused(exc: UploadError | ModelUnavailable):
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        status = exc.code or 500
        if status == 413:
            limit = app.config["MAX_CONTENT_LENGTH"] / MEGABYTE
            return error_response(413, "too_large", f"The upload is larger than the {limit:g} MB limit.")
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(status, code, exc.description or TITLES.get(status, "Error"))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s", request.path)
        return error_response(500, "internal_error", "The server hit an unexpected error; it has been logged.")
