"""Prediction results and model facts as plain data for the API and the pages."""
from __future__ import annotations

import base64
import io
import time

from flask import current_app, g, request

from training.inference import Predictor

from .decoders import DecoderPool, decoder_pool
from .feedback import log_answers, parse_share
from .metrics import record_results
from .model import model_holder
from .photostore import photo_store
from .uploads import DecodeLimits, Upload, parse_top_k, read_uploads


class ModelUnavailable(Exception):
    """No model is loaded (503); the reason is safe to show."""

    status, code = 503, "model_unavailable"

    def __init__(self, reason: str | None):
        self.message = f"No model is loaded: {reason}"
        super().__init__(self.message)


def current_predictor() -> Predictor:
    """The loaded model, or a 503 explaining why there is none."""
    holder = model_holder()
    predictor = holder.get()
    if predictor is None:
        raise ModelUnavailable(holder.public_error)
    return predictor


def decode_limits() -> DecodeLimits:
    """The configured bounds on what one request may make the decoders do."""
    config = current_app.config
    return DecodeLimits(config["MAX_FILES"], config["MAX_PIXELS"], config["MAX_REQUEST_PIXELS"],
                        config["DECODE_SECONDS"])


def current_decoders() -> DecoderPool:
    """This worker's decoder processes (started on the first upload)."""
    config = current_app.config
    return decoder_pool(config["DECODERS"], config["DECODE_MEMORY_MB"], config["MAX_PIXELS"])


def unsure_below_in_force(predictor: Predictor) -> tuple[float, str]:
    """The top probability below which answers are shown as "not sure", and its source: the setting
    (GUITARS_UNSURE_BELOW) when there is one, else the model's own line."""
    configured = current_app.config.get("UNSURE_BELOW")
    if configured is not None:
        return float(configured), "setting"
    return predictor.unsure_below, predictor.sources["unsure_below"]


def model_summary(predictor: Predictor) -> dict:
    """The loaded model: the values its answers are decided with (and where each came from), its metadata, and
    its report's validation metrics (documentation only)."""
    validation = predictor.report.get("validation", {})
    unsure_below, source = unsure_below_in_force(predictor)
    return {
        **predictor.describe(),
        "version": model_holder().version(predictor),  # the promoted run's name (GUITARS_MODELS), else None
        "validation": {k: validation.get(k) for k in ("accuracy", "macro_f1", "n", "per_class",
                                                       "confusion_matrix", "most_confused")},
        "unsure_below": unsure_below,
        "sources": {**predictor.sources, "unsure_below": source},
    }


def classify(predictor: Predictor, uploads: list[Upload], top_k: int) -> list[dict]:
    """Top-k predictions for every upload, in one batch, with the not-sure and in-scope flags."""
    threshold, _ = unsure_below_in_force(predictor)
    predictions = predictor.predict([u.image for u in uploads])
    return [p.as_result(u.filename, top_k, threshold) for u, p in zip(uploads, predictions)]


def png_data_uri(image, max_side: int | None = None) -> str:
    """An image as an inline PNG, so uploads are shown without ever being stored."""
    if max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def classify_request() -> tuple[Predictor, list[Upload], list[dict]]:
    """Read the current request's files and `top_k`, and classify them: shared by the API and the form."""
    predictor = current_predictor()
    top_k = parse_top_k(request.values.get("top_k"), current_app.config["TOP_K"], len(predictor.classes))
    share = parse_share(request.values.get("share"))
    if share:
        photo_store().check_room()  # a store with no room refuses before any decoding
    started = time.perf_counter()
    uploads = read_uploads(request.files.getlist("file"), current_decoders(), decode_limits())
    decoded = time.perf_counter()
    results = classify(predictor, uploads, top_k)
    record_results(results)
    # Where a request's time went, for the Server-Timing header: operators and bench/serve.py read it.
    g.server_timing = {"decode": decoded - started, "model": time.perf_counter() - decoded}
    log_answers(predictor, uploads, results, share)  # each result gets its answer's id
    return predictor, uploads, results


def server_timing_header() -> str | None:
    """The current request's timings as a Server-Timing header value (milliseconds), if it classified anything."""
    timings = g.get("server_timing")
    return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in timings.items()) if timings else None
