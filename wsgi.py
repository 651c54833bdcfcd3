"""Entry point for `gunicorn wsgi:app` and `flask --app wsgi ...`."""
import os

from webapp import create_app
from webapp.db import database

app = create_app()
# The flask CLI sets FLASK_RUN_FROM_CLI for every command it runs; without it a WSGI server (gunicorn) imported us.
if os.environ.get("FLASK_RUN_FROM_CLI") != "true":
    # Served: each worker migrates before it takes traffic, and one that cannot open its database fails to start.
    # Commands open the database on first use, so those that need none (flask predict, flask train) never do.
    database(app).migrate()
