"""Answers and verdicts written straight into a real app's database and photo store, for the feedback tests."""
from __future__ import annotations

from datetime import timedelta

from PIL import Image

from tests.helpers import encode
from webapp import create_app, db
from webapp.photostore import EXTENSION as PHOTOS

SHA_OLD, SHA_NEW = "a" * 64, "b" * 64


def photo_with_exif(path, size=(2000, 1500)) -> bytes:
    """A demo photo enlarged past the store's 1024 px, as a JPEG carrying a camera make and GPS coordinates."""
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)}  # GPSInfo
    return encode(Image.open(path).convert("RGB").resize(size), "JPEG", exif=exif, quality=92)


def feedback_app(tmp_path, **config):
    """An app with its own SQLite file and photo folder (no model needed: these pages and commands read the log)."""
    return create_app({"TESTING": True, "WTF_CSRF_ENABLED": False, "MODEL_PATH": str(tmp_path / "no-model"),
                       "DATABASE_URL": f"sqlite:///{tmp_path / 'guitars.db'}",
                       "FEEDBACK_DIR": str(tmp_path / "feedback"), **config})


def add(app, label, said, photo: Image.Image | None = None, sha=SHA_NEW, in_scope=True, minutes=0,
        reviewed: str | None = None) -> str:
    """One answer (top class `label`) and its verdict: said is "right", a class, or None for none of these."""
    with app.app_context():
        names = app.extensions[PHOTOS].put_all([photo]) if photo is not None else [None]
        with db.database(app).sessions() as session:
            answer = db.Answer(model_sha256=sha, label=label, probability=0.8, uncertain=False, in_scope=in_scope,
                               scores=[{"label": label, "probability": 0.8}], photo=names[0],
                               created_at=db.utcnow() - timedelta(minutes=60 - minutes))
            right = said == "right"
            none = said is None or (right and not in_scope)
            session.add(answer)
            session.flush()
            session.add(db.Verdict(answer_id=answer.id, correct=right,
                                   label=None if none else (label if right else said), none_of_these=none,
                                   created_at=answer.created_at + timedelta(seconds=30),
                                   reviewed_at=db.utcnow() if reviewed else None, review_decision=reviewed))
            session.commit()
            return answer.id
