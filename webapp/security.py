"""CSRF protection for the HTML form and security headers on every response."""
from __future__ import annotations

from flask import Flask, current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()
# Counts live in each worker's memory: with N workers a client may get up to N times the limit.
limiter = Limiter(get_remote_address, storage_uri="memory://", default_limits=[])


def model_rate_limit() -> str:
    """`GUITARS_RATE_LIMIT` requests per minute per client address; 0 (the default) switches it off."""
    return f"{current_app.config['RATE_LIMIT_PER_MINUTE']}/minute"


def rate_limit_off() -> bool:
    return not current_app.config.get("RATE_LIMIT_PER_MINUTE")


# One budget per client for every route that runs the model (the API and the form, which also draws heat maps).
limit_model_use = limiter.shared_limit(model_rate_limit, scope="model", exempt_when=rate_limit_off)

# Only our own assets; inline images are the uploads and heat maps we render as data: URIs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def init_app(app: Flask, csrf_exempt=()) -> None:
    """Protect forms (cookie-less blueprints such as the JSON API are exempt), rate-limit, and add headers."""
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    csrf.init_app(app)
    for blueprint in csrf_exempt:
        csrf.exempt(blueprint)
    limiter.init_app(app)

    @app.after_request
    def headers(response):
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response
