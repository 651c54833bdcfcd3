"""The popular-template baseline: Flask + `learn.predict(PILImage.create(bytes))` per request, for bench/serve.py."""
import os

from fastai.learner import load_learner
from fastai.vision.core import PILImage
from flask import Flask, jsonify, request

import training.inference  # noqa: F401  (the exported learner pickles references to the project's transforms)
from training.runfiles import model_file

app = Flask(__name__)
learn = load_learner(model_file(os.environ["GUITARS_MODEL"]), cpu=True)


@app.post("/api/v1/predict")
def predict():
    results = []
    for storage in request.files.getlist("file"):
        label, _, probs = learn.predict(PILImage.create(storage.read()))
        results.append({"filename": storage.filename,
                        "predictions": [{"label": str(label), "probability": float(probs.max())}]})
    return jsonify({"results": results})
