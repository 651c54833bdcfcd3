"""Feedback photos on the review page: a person accepts one into the training data (or the "none of these"
folder) or rejects it; nothing reaches either folder otherwise."""
from __future__ import annotations

import logging
from pathlib import Path

from flask import Blueprint, Flask, abort, current_app, redirect, render_template, request, send_file, url_for
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from training.review import add_photo

from .db import Answer, Verdict, get_db, utcnow
from .photostore import photo_store
from .review import require_token

log = logging.getLogger(__name__)
bp = Blueprint("review_feedback", __name__, url_prefix="/review/feedback")
bp.before_request(require_token)  # the review page's token guards this part of it too
DECISIONS = ("accepted", "rejected")
OOD_GROUP = "feedback"  # the sub-folder of the "none of these" folder: `flask evaluate --ood` scores it as one kind
SHOWN = 50  # feedback photos on one page, oldest first


def pending():
    """Verdicts whose answer kept a photo (shared with consent) and that nobody has reviewed yet."""
    return (select(Verdict).join(Answer, Verdict.answer_id == Answer.id)
            .where(Answer.photo.is_not(None), Verdict.reviewed_at.is_(None)))


def pending_count(session: Session | None = None) -> int:
    """How many feedback photos wait for a decision (0 when the database cannot be read: the queue still works)."""
    try:
        return (session or get_db()).scalar(select(func.count()).select_from(pending().subquery()))
    except SQLAlchemyError:
        log.exception("feedback photos could not be counted")
        return 0


def ood_folder() -> Path:
    """Where accepted "none of these" photos go: GUITARS_FEEDBACK_OOD, else DATA-ood beside the data folder."""
    data = Path(current_app.config["REVIEW_DATA"])
    return Path(current_app.config.get("FEEDBACK_OOD") or data.with_name(data.name + "-ood")) / OOD_GROUP


def destination(verdict: Verdict) -> Path:
    """The folder an accepted photo goes to: DATA/<the person's label>/, or the "none of these" folder."""
    if verdict.none_of_these:
        return ood_folder()
    folder = Path(current_app.config["REVIEW_DATA"]) / verdict.label
    if not folder.is_dir():  # a new class folder of one photo would break the next run's split: refuse
        abort(409, f"The data folder has no class folder {verdict.label!r}: create it first, or reject the photo.")
    return folder


@bp.get("/")
def index():
    verdicts = get_db().scalars(pending().order_by(Verdict.created_at).limit(SHOWN)).all()
    return render_template("review_feedback.html", verdicts=verdicts, waiting=pending_count(),
                           destinations={v.answer_id: shown_destination(v) for v in verdicts})


def shown_destination(verdict: Verdict) -> str:
    data = Path(current_app.config["REVIEW_DATA"])
    return str(ood_folder()) if verdict.none_of_these else f"{data.name}/{verdict.label}/"


@bp.get("/photo/<answer_id>")
def photo(answer_id: str):
    # Only photos waiting for a decision are shown: the page is no browser of the store.
    verdict = get_db().scalar(pending().where(Verdict.answer_id == answer_id))
    if verdict is None:
        abort(404)
    try:
        return send_file(photo_store().path(verdict.answer.photo), mimetype="image/jpeg", max_age=0)
    except FileNotFoundError:
        abort(404)


@bp.post("/<answer_id>")
def decide(answer_id: str):
    decision = request.form.get("decision", "")
    if decision not in DECISIONS:
        abort(400, "Choose accepted or rejected.")
    session = get_db()
    verdict = session.scalar(pending().where(Verdict.answer_id == answer_id))
    if verdict is None:
        abort(404, "No feedback photo waits with that id: it was decided already, or its photo has expired.")
    folder = destination(verdict) if decision == "accepted" else None
    # Claim it first (only one decision wins, however many reviewers press at once), copy, then commit.
    claimed = session.execute(update(Verdict).where(Verdict.id == verdict.id, Verdict.reviewed_at.is_(None))
                              .values(reviewed_at=utcnow(), review_decision=decision)).rowcount
    if not claimed:
        session.rollback()
        abort(409, "Someone decided this photo a moment ago.")
    if folder is not None:
        try:
            data = photo_store().path(verdict.answer.photo).read_bytes()  # already re-encoded, without EXIF
        except FileNotFoundError:
            session.rollback()
            abort(410, "The photo has expired from the store.")
        try:
            target = add_photo(folder, f"feedback-{answer_id}", data)
        except OSError:
            session.rollback()
            log.exception("feedback photo %s could not be written into %s", answer_id, folder)
            abort(500)
        log.info("feedback photo %s accepted into %s", answer_id, target)
    session.commit()
    return redirect(url_for("review_feedback.index"))


def register(app: Flask) -> None:
    """Serve the feedback review beside the queue, behind the review page's token."""
    if bp.name not in app.blueprints:
        app.register_blueprint(bp)
