"""JSON API: predict, model metadata, health and readiness, OpenAPI description."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, current_app, jsonify, send_file

from .security import api_rate_limit, limiter, rate_limit_off
from .service import classify_request, current_predictor, server_timing_header

bp = Blueprint("api", __name__)
OPENAPI = Path(__file__).with_name("openapi.json")


def model_summary(predictor) -> dict:
    """Metadata and validation metrics of the loaded model."""
    report = predictor.report
    validation = report.get("validation", {})
    return {
        **predictor.describe(),
        "validation": {k: validation.get(k) for k in ("accuracy", "macro_f1", "n", "per_class",
                                                       "confusion_matrix", "most_confused")},
        "unsure_below": report.get("unsure_below"),
    }


@bp.post("/api/v1/predict")
@limiter.limit(api_rate_limit, exempt_when=rate_limit_off)
def predict():
    predictor, _, results = classify_request()
    response = jsonify({"model": predictor.describe(), "results": results})
    response.headers["Server-Timing"] = server_timing_header()
    return response


@bp.get("/api/v1/model")
def model():
    return jsonify(model_summary(current_predictor()))


@bp.get("/api/v1/openapi.json")
def openapi():
    return send_file(OPENAPI, mimetype="application/json")


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    holder = current_app.extensions["guitars_model"]
    if holder.get() is None:
        return jsonify({"status": "not ready", "reason": holder.error}), 503
    return jsonify({"status": "ready"})

