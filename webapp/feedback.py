"""Feedback: every answer logged with an id, the person's verdict on it (API and form), photos kept only with consent."""
from __future__ import annotations

import logging

from flask import Blueprint, Flask, render_template, request
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from training.inference import Predictor

from .db import Answer, Verdict, database, get_db, prune_answers
from .model import model_holder
from .photostore import photo_store
from .security import limit_model_use
from .uploads import Upload, UploadError

log = logging.getLogger(__name__)
bp = Blueprint("feedback", __name__)
YES, NO = ("1", "true", "on", "yes"), ("", "0", "false", "off", "no")


class Refused(UploadError):
    """A verdict we refuse (unknown answer, no such class, a second verdict...): nothing was changed."""


def parse_share(raw) -> bool:
    """The `share` consent flag of a form or an API request: absent means no."""
    value = (raw or "").strip().lower()
    if value not in YES + NO:
        raise UploadError(400, "bad_share", f"share must be true or false, got {str(raw)[:20]!r}.")
    return value in YES


def log_answers(predictor: Predictor, uploads: list[Upload], results: list[dict], share: bool) -> None:
    """Log each answer (and, with consent, its photo) and put its `id` on the result; at most one id per photo.

    Without consent nothing of the photo is kept. A request that shares photos the store has no room for is refused
    whole (StoreFull, raised before any row is written). If the database cannot be written, the answers still go
    out, without ids, and no photo stays.
    """
    store, db = photo_store(), database()
    try:  # the first use opens and migrates the database (`flask run`): one that is down costs only the ids
        session = get_db(write=True)
        if share:
            purge_expired(store, session)  # what is past its retention makes room first
    except (SQLAlchemyError, OSError):  # OSError: a SQLite folder that cannot be made
        log.exception("answers not logged (the database could not be opened); they go out without ids")
        for result in results:
            result["id"] = None
        return
    photos = store.put_all([u.image for u in uploads]) if share else [None] * len(uploads)
    answers = [Answer(model_sha256=predictor.sha256, label=r["predictions"][0]["label"],
                      probability=r["predictions"][0]["probability"], uncertain=bool(r["uncertain"]),
                      in_scope=bool(r["in_scope"]), scope=r.get("scope"), group_label=(r.get("group") or {}).get("label"),
                      scores=[{"label": p["label"], "probability": p["probability"]} for p in r["predictions"]],
                      photo=photo) for r, photo in zip(results, photos)]
    try:
        session.add_all(answers)
        session.commit()
    except SQLAlchemyError:
        session.rollback()
        store.delete(photos)
        log.exception("answers not logged (the database could not be written); they go out without ids")
        for result in results:
            result["id"] = None
        return
    for result, answer in zip(results, answers):
        result["id"] = answer.id
    if db.answers_written(len(answers)):
        try:
            pruned = prune_answers(session, db.max_answers)
            session.commit()
        except SQLAlchemyError:  # the log's bound waits for the next round; the answers are already kept
            session.rollback()
            log.exception("pruning the answer log failed")
        else:
            if pruned:
                log.info("answer log: %d oldest answers with no verdict and no photo deleted", pruned)
        purge_expired(store, session)


def purge_expired(store, session) -> None:
    """Delete the photos past their retention; a failure waits for the next round (and is logged)."""
    try:
        store.purge_expired(session)
    except SQLAlchemyError:
        session.rollback()
        log.exception("deleting the photos past their retention failed")


def known_classes(answer: Answer) -> set[str]:
    """The classes a verdict on `answer` may name: the served model's when it gave the answer, else the served
    model's and those the answer itself listed (a model no longer loaded is known only by them)."""
    predictor = model_holder().get()
    answered = {score["label"] for score in answer.scores}
    if predictor is None:
        return answered
    return set(predictor.classes) if predictor.sha256 == answer.model_sha256 else set(predictor.classes) | answered


def record_verdict(answer_id, said: dict) -> Verdict:
    """Keep one person's verdict on one answer, or refuse it (400/404/409/422) with nothing changed.

    `said` is {"correct": true} (the answer was right), {"label": CLASS} or {"none_of_these": true}; the server
    decides `correct` from it, so a verdict can never contradict itself.
    """
    if not isinstance(answer_id, str) or not answer_id:
        raise Refused(400, "bad_feedback", "Send the `id` of the answer (every /api/v1/predict result carries one).")
    session = get_db()
    answer = session.get(Answer, answer_id)
    if answer is None:
        raise Refused(404, "unknown_answer", "There is no answer with that id (or it is too old to be kept).")
    if answer.verdict is not None:
        raise Refused(409, "already_answered", "That answer already has a verdict; it is kept as it was.")
    label, none_of_these, correct = said.get("label"), said.get("none_of_these", False), said.get("correct")
    if not isinstance(none_of_these, bool) or correct not in (None, True, False):
        raise Refused(400, "bad_feedback", "`correct` and `none_of_these` are true or false.")
    if label is not None and (not isinstance(label, str) or none_of_these):
        raise Refused(400, "bad_feedback", "Send either a class id as `label` or `none_of_these`, not both.")
    if correct and label is None and not none_of_these:  # "right": whatever the answer was
        label, none_of_these = (answer.label, False) if answer.in_scope else (None, True)
    if label is None and not none_of_these:
        raise Refused(400, "bad_feedback", "Say which class it is (`label`), or `none_of_these`, or `correct`.")
    if label is not None and label not in known_classes(answer):
        raise Refused(422, "unknown_label", f"{label[:60]!r} is not one of the classes of the model that answered.")
    right = (answer.in_scope and label == answer.label) or (not answer.in_scope and none_of_these)
    if correct is not None and correct != right:
        raise Refused(400, "bad_feedback", "`correct` contradicts the label given: leave `correct` out.")
    verdict = Verdict(answer_id=answer.id, correct=right, label=label, none_of_these=none_of_these)
    session.add(verdict)
    try:
        session.commit()
    except IntegrityError:  # another worker's verdict on the same answer got in first
        session.rollback()
        raise Refused(409, "already_answered", "That answer already has a verdict; it is kept as it was.") from None
    return verdict


def verdict_json(verdict: Verdict) -> dict:
    return {"id": verdict.answer_id, "correct": verdict.correct, "label": verdict.label,
            "none_of_these": verdict.none_of_these, "created_at": verdict.created_at.isoformat()}


@bp.post("/api/v1/feedback")
@limit_model_use
def api_feedback():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise Refused(400, "bad_feedback", 'Send a JSON object: {"id": ..., "correct": true} or "label" or '
                                           '"none_of_these".')
    return verdict_json(record_verdict(body.get("id"), body)), 201


@bp.post("/feedback/<answer_id>")
@limit_model_use
def form_feedback(answer_id: str):
    choice = request.form.get("verdict", "")
    said = {"right": {"correct": True}, "wrong": {"label": request.form.get("label") or None},
            "none": {"none_of_these": True}}.get(choice)
    if said is None:
        raise Refused(400, "bad_feedback", "Choose right, wrong (with the class it is) or none of these.")
    verdict = record_verdict(answer_id, said)
    predictor = model_holder().get()
    names = predictor.names if predictor is not None else {}
    return render_template("feedback.html", verdict=verdict, name=names.get(verdict.label, verdict.label))


def init_app(app: Flask) -> None:
    """The feedback routes; the API's is cookie-less, so CSRF guards only the form's."""
    from . import photostore, security

    photostore.init_app(app)
    app.register_blueprint(bp)
    security.csrf.exempt(api_feedback)
