"""CSRF protection for the HTML form, the operator's token, and security headers on every response."""
from __future__ import annotations

import hashlib
import secrets

from flask import Flask, abort, current_app, redirect, request, session
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



TOKEN_KEY = "review_token"  # the session key that remembers a browser has shown the operator's token


def token_digest(token: str) -> str:
    """A token's SHA-256 (hex): compared as bytes, so any text a client sends is just a mismatch."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def operator_session() -> bool:
    """Whether this browser's session holds the operator's token (GUITARS_REVIEW_TOKEN)."""
    token = current_app.config.get("REVIEW_TOKEN")
    return bool(token) and secrets.compare_digest(str(session.get(TOKEN_KEY, "")).encode(),
                                                  token_digest(token).encode())


def accept_operator_token() -> bool:
    """Whether this request shows the operator's token (?token=); the session then remembers it."""
    token, given = current_app.config.get("REVIEW_TOKEN"), request.args.get("token")
    if not token or given is None or not secrets.compare_digest(token_digest(given), token_digest(token)):
        return False
    session[TOKEN_KEY] = token_digest(token)  # the cookie is signed, not encrypted: the digest, never the token
    return True


def require_operator(page: str):
    """Let only a browser that has shown the operator's token (?token=, then its session) see `page`."""
    if not current_app.config.get("REVIEW_TOKEN"):  # 404, as the review page is absent without its token
        abort(404, f"{page} is off on this server: to turn it on, set GUITARS_REVIEW_TOKEN (the review page's token) "
                   f"and open {request.path}?token=THAT_TOKEN once.")
    if accept_operator_token():
        if not request.path.startswith("/api/"):  # a page: the token leaves the address bar, its history and Referers
            return redirect(request.path)
    elif not operator_session():
        abort(403, f"{page} is for the server's operator: open {request.path}?token=THE_TOKEN once "
                   "(GUITARS_REVIEW_TOKEN, the review page's token).")
    return None


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
