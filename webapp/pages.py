"""HTML pages: upload form, results with heat maps, and the model page."""
from __future__ import annotations

import logging

from flask import Blueprint, current_app, render_template, send_from_directory
from sqlalchemy.exc import SQLAlchemyError

from training.runfiles import CONFUSION_MATRIX_PNG

from .db import get_db
from .feedback_stats import agreement
from .heatmap import heat_map
from .model import model_holder
from .photostore import photo_store
from .security import limit_model_use
from .service import classify_request, current_predictor, model_summary, png_data_uri
from .settings import MEGABYTE

log = logging.getLogger(__name__)
bp = Blueprint("pages", __name__)
THUMBNAIL_SIDE = 320  # pixels: the uploaded photo as shown beside its heat map


@bp.app_template_filter("article")
def article(word: str, capital: bool = False) -> str:
    """The indefinite article for `word` ("a" or "an", or "A"/"An" with `capital`), by its first letter."""
    chosen = "an" if word[:1].lower() in tuple("aeiou") else "a"  # tuple: "" is in every string
    return chosen.capitalize() if capital else chosen


@bp.get("/")
def index():
    holder = model_holder()
    predictor = holder.get()
    return render_template("index.html", predictor=predictor, error=holder.public_error,
                           max_mb=current_app.config["MAX_CONTENT_LENGTH"] / MEGABYTE,
                           max_files=current_app.config["MAX_FILES"], share_enabled=photo_store().enabled)


@bp.post("/predict")
@limit_model_use
def predict():
    predictor, uploads, results = classify_request()
    for upload, result in zip(uploads, results):
        result["thumbnail"] = png_data_uri(upload.image, max_side=THUMBNAIL_SIDE)
        result["heat_map"] = png_data_uri(heat_map(predictor, upload.image, result["predictions"][0]["label"]))
    return render_template("results.html", results=results, predictor=predictor)


@bp.get("/model")
def model():
    predictor = current_predictor()
    has_matrix_png = (predictor.path.parent / CONFUSION_MATRIX_PNG).is_file()
    return render_template("model.html", model=model_summary(predictor), report=predictor.report,
                           has_matrix_png=has_matrix_png, people=people_said())


def people_said() -> dict | None:
    """The verdicts' agreement figures for /model; None (the page still renders) when the database fails."""
    try:
        return agreement(get_db())
    except SQLAlchemyError:
        log.exception("the verdicts could not be read for the model page")
        return None


@bp.get("/model/confusion_matrix.png")
def confusion_matrix():
    predictor = current_predictor()
    # send_from_directory answers 404 for a missing file, even one deleted after the page was rendered.
    return send_from_directory(predictor.path.parent, CONFUSION_MATRIX_PNG, mimetype="image/png", max_age=60)
