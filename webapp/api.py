"""JSON API: predict, model metadata, health and readiness, OpenAPI description."""
from __future__ import annotations

import os
from pathlib import Path

from flask import Blueprint, jsonify, send_file

from .model import model_holder
from .security import limit_model_use
from .service import classify_request, current_predictor, model_summary, server_timing_header

bp = Blueprint("api", __name__)
OPENAPI = Path(__file__).with_name("openapi.json")


@bp.post("/api/v1/predict")
@limit_model_use
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
    holder = model_holder()
    predictor = holder.get()
    if predictor is None:
        return jsonify({"status": "not ready", "reason": holder.public_error, "worker": os.getpid()}), 503
    # Which model this worker serves: during a reload, workers can tell a balancer (and a test) apart.
    return jsonify({"status": "ready", "model_sha256": predictor.sha256, "version": holder.version(predictor),
                    "worker": os.getpid()})

