"""Flask application factory: pages, JSON API and the training commands."""
from __future__ import annotations

import os
from pathlib import Path

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from .requests import InMemoryRequest


def create_app(test_config: dict | None = None) -> Flask:
    """Create the app from GUITARS_* environment variables, or (as in flaskr) from `test_config` over the defaults."""
    app = Flask(__name__, template_folder="../templates", static_folder="../static", instance_relative_config=True)
    app.request_class = InMemoryRequest
    from .settings import load_settings

    if test_config is None:
        app.config.update(load_settings(os.environ, Path(app.instance_path)))
    else:  # a test's app reads no environment and writes nothing into the checkout
        app.config.update(load_settings({}))
        app.config.update(test_config)
    if app.config.get("PROXY_HOPS"):  # behind nginx (deploy/): the client's address is in X-Forwarded-For
        hops = app.config["PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    init_app(app)
    return app


def init_app(app: Flask) -> None:
    """Attach the model holder, blueprints, error handlers and click commands."""
    from training.cli import COMMANDS
    from training.decoding import allow_pixels

    from . import api, db, errors, feedback, feedback_cli, logs, metrics, monitor, pages, review, security
    from .model import EXTENSION, ModelHolder

    app.extensions[EXTENSION] = ModelHolder(app.config["MODEL_PATH"], app.config["RUNTIME"],
                                            tta=app.config["TTA"] == "flip", models=app.config.get("MODELS_DIR"))
    db.init_app(app)  # answers and verdicts: opened and migrated on first use (a served app: at start, wsgi.py)
    allow_pixels(app.config["MAX_PIXELS"])  # Pillow's own guard must not refuse what the operator allowed
    security.init_app(app, csrf_exempt=[api.bp])  # the JSON API is cookie-less
    errors.init_app(app)
    logs.init_app(app)
    metrics.init_app(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(monitor.bp)  # /monitor and /api/v1/monitor: live answers against validation
    feedback.init_app(app)
    feedback_cli.init_app(app)  # flask feedback list | export | stats
    review.init_app(app)
    for command in COMMANDS:
        app.cli.add_command(command)
