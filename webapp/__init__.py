"""Flask application factory: pages, JSON API and the training commands."""
from __future__ import annotations

import os
from pathlib import Path

from flask import Flask


def create_app(config: dict | None = None) -> Flask:
    """Create the app; settings come from `config`, else GUITARS_* environment variables, else defaults."""
    app = Flask(__name__, template_folder="../templates", static_folder="../static", instance_relative_config=True)
    from .settings import load_settings

    app.config.update(load_settings(os.environ, Path(app.instance_path)))
    if config:
        app.config.update(config)
    init_app(app)
    return app


def init_app(app: Flask) -> None:
    """Attach the model holder, blueprints, error handlers and click commands."""
    from training.cli import COMMANDS

    from . import api, errors, pages, security
    from .model import ModelHolder

    app.extensions["guitars_model"] = ModelHolder(app.config["MODEL_PATH"], app.config["RUNTIME"],
                                                   tta=app.config["TTA"] == "flip")
    security.init_app(app)
    errors.init_app(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    for command in COMMANDS:
        app.cli.add_command(command)
