"""HTML pages: upload form, results with heat maps, and the model page."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template, send_from_directory

from .api import model_summary
from .security import limit_model_use
from .service import classify_request, current_predictor, png_data_uri

bp = Blueprint("pages", __name__)
CONFUSION_MATRIX_PNG = "confusion_matrix.png"


@bp.get("/")
def index():
    holder = current_app.extensions["guitars_model"]
    predictor = holder.get()
    return render_template("index.html", predictor=predictor, error=holder.public_error,
                           max_mb=current_app.config["MAX_CONTENT_LENGTH"] / (1024 * 1024),
                           max_files=current_app.config["MAX_FILES"])


@bp.post("/predict")
@limit_model_use
def predict():
    predictor, uploads, results = classify_request()
    for upload, result in zip(uploads, results):
        result["thumbnail"] = png_data_uri(upload.image, max_side=320)
        result["heat_map"] = png_data_uri(predictor.heat_map(upload.image, result["predictions"][0]["label"]))
    return render_template("results.html", results=results, predictor=predictor)


@bp.get("/model")
def model():
    predictor = current_predictor()
    has_matrix_png = (predictor.path.parent / CONFUSION_MATRIX_PNG).is_file()
    return render_template("model.html", model=model_summary(predictor), report=predictor.report,
                           has_matrix_png=has_matrix_png)


@bp.get("/model/confusion_matrix.png")
def confusion_matrix():
    predictor = current_predictor()
    # send_from_directory answers 404 for a missing file, even one deleted after the page was rendered.
    return send_from_directory(predictor.path.parent, CONFUSION_MATRIX_PNG, mimetype="image/png", max_age=60)
