"""The feedback API flow and the concurrent-verdicts check, against any running server and its database."""
from __future__ import annotations

import json
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from PIL import Image
from sqlalchemy import func, select

from tests.helpers import encode
from webapp import db


def photo_with_gps(path, size=(2000, 1500)) -> bytes:
    """A real demo photo, enlarged past the store's 1024 px, carrying a camera make and GPS coordinates."""
    image = Image.open(path).convert("RGB").resize(size)
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)}  # GPSInfo
    return encode(image, "JPEG", exif=exif, quality=92)


def schema_diff(engine) -> list:
    """What Alembic's autogenerate would change to make the database match the models (types included)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(context, db.Base.metadata)


def predict(url: str, photos: list[bytes], **form) -> requests.Response:
    files = [("file", (f"p{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
    return requests.post(url + "/api/v1/predict", files=files, data=form, timeout=120)


def verdict(url: str, rid: str, **body) -> requests.Response:
    return requests.post(url + "/api/v1/feedback", json=body, headers={"X-Request-ID": rid}, timeout=60)


def api_flow(url: str, database_url: str, photo_dir: Path, photos: list[bytes]) -> None:
    """Two photos shared and two not; a verdict of each kind; every abuse refused; the database and the folder
    hold exactly what was said and shared."""
    shared = predict(url, photos[:2], share="true")
    assert shared.status_code == 200, shared.text
    private = predict(url, photos[2:3] * 2)
    ids = [r["id"] for r in shared.json()["results"] + private.json()["results"]]
    files = sorted(photo_dir.glob("*.jpg"))
    assert len(files) == 2 and all(not Image.open(f).getexif() for f in files)
    top = shared.json()["results"][1]["predictions"][0]["label"]
    other = next(c for c in shared.json()["model"]["classes"] if c != top)
    assert verdict(url, "v0", id=ids[0], correct=True).status_code == 201
    assert verdict(url, "v1", id=ids[1], label=other).json()["correct"] is False
    assert verdict(url, "v2", id=ids[2], none_of_these=True).status_code == 201
    for body, status in (({"id": ids[0], "label": other}, 409), ({"id": "nope", "correct": True}, 404),
                         ({"id": ids[3], "label": "no_such_class"}, 422)):
        response = verdict(url, "bad", **body)
        assert response.status_code == status and response.json()["error"]["code"], response.text
    engine = db.make_engine(database_url)
    try:
        with db.sessionmaker(engine)() as session:
            answers = {a.id: a for a in session.scalars(select(db.Answer))}
            verdicts = {v.answer_id: v for v in session.scalars(select(db.Verdict))}
    finally:
        engine.dispose()
    assert set(answers) == set(ids) and set(verdicts) == set(ids[:3])  # the refused ones changed nothing
    assert {a.photo for a in answers.values()} == {f.name for f in files} | {None}
    assert answers[ids[2]].photo is answers[ids[3]].photo is None
    assert verdicts[ids[1]].label == other and verdicts[ids[2]].none_of_these


def concurrent_verdicts(url: str, database_url: str, photo: bytes, log_path: Path, answers: int = 48,
                        clients: int = 12) -> None:
    """Many clients send verdicts at once, each answer's twice: every first one is kept, every second refused
    (409), none lost, and both workers took some (their JSON access lines say which)."""
    ids = []
    while len(ids) < answers:
        response = predict(url, [photo] * 8)
        assert response.status_code == 200, response.text
        ids += [r["id"] for r in response.json()["results"]]
    sends = [(i, n) for i in ids for n in range(2)]
    random.Random(7).shuffle(sends)

    def send(item):
        answer_id, n = item
        with requests.Session() as session:  # a new connection each: either worker may take it
            return session.post(url + "/api/v1/feedback", json={"id": answer_id, "label": "les_paul"},
                                headers={"X-Request-ID": f"c-{answer_id}-{n}"}, timeout=60).status_code

    with ThreadPoolExecutor(clients) as pool:
        statuses = Counter(pool.map(send, sends))
    assert statuses == {201: len(ids), 409: len(ids)}, statuses
    engine = db.make_engine(database_url)
    try:
        with engine.connect() as connection:
            ours = db.Verdict.answer_id.in_(ids)
            kept = connection.execute(select(func.count(func.distinct(db.Verdict.answer_id))).where(ours)).scalar()
            total = connection.execute(select(func.count()).select_from(db.Verdict).where(ours)).scalar()
    finally:
        engine.dispose()
    assert kept == total == len(ids)
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    workers = {e["worker"] for e in entries if e.get("logger") == "gunicorn.access"
               and str(e.get("request_id", "")).startswith("c-")}
    assert len(workers) == 2, f"both workers should have written verdicts, got {workers}"
