"""The review page: the data owner walks the review queue and keeps, relabels or excludes photos (off by default)."""
from __future__ import annotations

import secrets
from pathlib import Path

import click
from flask import Blueprint, Flask, abort, current_app, redirect, render_template, request, send_from_directory, url_for
from werkzeug.serving import run_simple

from training.labels import DECISIONS, latest_decisions, read_decisions, record_decision, undo_last_decision
from training.review import queue_path, read_queue

from .security import accept_operator_token, operator_session

bp = Blueprint("review", __name__, url_prefix="/review")


def data_root() -> Path:
    return Path(current_app.config["REVIEW_DATA"])


def load_queue() -> dict:
    """The queue `flask dataset review` wrote for the configured data folder."""
    path = queue_path(data_root(), current_app.config.get("REVIEW_QUEUE"))
    try:
        return read_queue(path)
    except FileNotFoundError:
        abort(404, f"No review queue yet: run `flask --app wsgi dataset review --data {data_root().name}` first.")


@bp.before_request
def require_token():
    """Only a browser that has shown the operator's token may see or change anything."""
    if not accept_operator_token() and not operator_session():
        abort(403, "The review page needs the token printed by `flask review`: open the link it printed.")


def next_open(entries: list[dict], decided: dict, after: int = -1) -> int | None:
    """The first undecided entry after `after` (wrapping round), or None when every one is decided."""
    order = list(range(after + 1, len(entries))) + list(range(0, after + 1))
    return next((i for i in order if entries[i]["path"] not in decided), None)


@bp.context_processor
def feedback_waiting() -> dict:
    from .feedback_review import pending_count

    return {"feedback_waiting": pending_count()}  # shown beside the queue on every review page


@bp.get("/")
def start():
    from .feedback_review import pending_count

    has_queue = queue_path(data_root(), current_app.config.get("REVIEW_QUEUE")).is_file()
    if not has_queue and pending_count():  # photos people sent can be reviewed before any queue exists
        return redirect(url_for("review_feedback.index"))
    queue = load_queue()
    index = next_open(queue["entries"], latest_decisions(read_decisions(data_root())))
    if index is None:
        return render_template("review_done.html", queue=queue)
    return redirect(url_for("review.entry", index=index))


def queue_and_entry(index: int) -> tuple[dict, dict]:
    """The queue and its entry `index`, or a 404."""
    queue = load_queue()
    if not 0 <= index < len(queue["entries"]):
        abort(404, "There is no such entry in the review queue.")
    return queue, queue["entries"][index]


@bp.get("/<int:index>")
def entry(index: int):
    queue, shown = queue_and_entry(index)
    entries = queue["entries"]
    decided = latest_decisions(read_decisions(data_root()))
    return render_template("review.html", queue=queue, index=index, entry=shown, decision=decided.get(shown["path"]),
                           done=sum(e["path"] in decided for e in entries))


@bp.post("/<int:index>")
def decide(index: int):
    queue, shown = queue_and_entry(index)
    decision, label = request.form.get("decision", ""), request.form.get("label", "")
    if decision not in DECISIONS or (decision == "relabel" and label not in queue["classes"]):
        abort(400, f"Choose one of {', '.join(DECISIONS)}; a relabel needs one of the classes.")
    record_decision(data_root(), shown["path"], decision, label)
    following = next_open(queue["entries"], latest_decisions(read_decisions(data_root())), index)
    return redirect(url_for("review.start") if following is None else url_for("review.entry", index=following))


@bp.post("/undo")
def undo():
    undone = undo_last_decision(data_root())
    paths = [e["path"] for e in load_queue()["entries"]]
    if undone is None or undone.path not in paths:
        return redirect(url_for("review.start"))
    return redirect(url_for("review.entry", index=paths.index(undone.path)))


@bp.get("/photo/<path:relpath>")
def photo(relpath: str):
    # Only photos the queue names (and their duplicates) are served: the page is no file browser.
    queue = load_queue()
    allowed = {e["path"] for e in queue["entries"]} | {p for e in queue["entries"] for p in e["group"]}
    if relpath not in allowed:
        abort(404)
    return send_from_directory(data_root(), relpath, max_age=0)


@click.command("review")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--queue", "queue_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The queue to walk [default: DATA/review-queue.json].")
@click.option("--port", default=5001, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", envvar="GUITARS_REVIEW_TOKEN", help="The page's access token [default: a new random one].")
def review_command(data_dir, queue_file, port, token):
    """Serve the review page for DATA on 127.0.0.1 only, behind a token; decisions go to DATA/labels.csv."""
    token = token or secrets.token_urlsafe(16)
    app = current_app._get_current_object()  # the command's own app, with the page turned on: not a second app
    app.config.update(REVIEW_DATA=str(data_dir.resolve()), REVIEW_TOKEN=token,
                      REVIEW_QUEUE=str(queue_file) if queue_file else None)
    register_page(app)
    click.echo(f"Review {data_dir} at http://127.0.0.1:{port}/review/?token={token}  (Ctrl+C to stop)")
    from .db import database
    from .feedback_review import pending_count

    # A session of its own, closed at once: one left open in the command's context would hold SQLite's write lock
    # (every transaction takes it) for as long as the page runs, and lock its requests out.
    with database(app).sessions() as session:
        waiting = pending_count(session)
    if waiting:
        click.echo(f"{waiting} photos people sent wait beside the queue: http://127.0.0.1:{port}/review/feedback/")
    # werkzeug's server on loopback: one person's tool, not a public site (that is gunicorn's job).
    run_simple("127.0.0.1", port, app, threaded=True)


def init_app(app: Flask) -> None:
    """Register the page only when a data folder and a token are configured; always offer the command."""
    app.cli.add_command(review_command)
    if app.config.get("REVIEW_DATA"):
        register_page(app)


def register_page(app: Flask) -> None:
    """Serve the review page on `app`, whose config names the data folder and the token."""
    if not app.config.get("REVIEW_TOKEN"):
        raise ValueError("the review page needs a token (GUITARS_REVIEW_TOKEN) as well as GUITARS_REVIEW_DATA")
    from . import feedback_review

    if bp.name not in app.blueprints:
        app.register_blueprint(bp)
    feedback_review.register(app)
