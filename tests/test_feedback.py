"""Feedback: the schema and its migration, answer ids, verdicts through the API and the form, the consented photo
store, and every abuse refused without changing anything (real Flask client, real images, SQLite on disk)."""
from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, inspect, select

from tests.feedback_flow import photo_with_gps, schema_diff
from tests.helpers import SMOKE_CLASSES, upload
from webapp import create_app, db
from webapp.model import EXTENSION as MODEL
from webapp.model import ModelHolder
from webapp.photostore import EXTENSION as PHOTOS
from webapp.photostore import reencode
from webapp.settings import MEGABYTE


def test_the_migration_creates_exactly_the_models_schema(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'guitars.db'}")
    db.upgrade(engine)
    assert schema_diff(engine) == []
    tables = inspect(engine).get_table_names()
    assert set(tables) == {"alembic_version", "answers", "verdicts"}
    db.upgrade(engine)  # a second worker starting finds nothing to do
    assert schema_diff(engine) == []


def test_sqlite_is_opened_in_wal_with_a_busy_timeout_and_foreign_keys(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'guitars.db'}")
    with engine.connect() as connection:
        pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert (pragma("journal_mode"), pragma("busy_timeout"), pragma("foreign_keys")) == ("wal", 10000, 1)


def test_times_come_back_as_utc_whatever_zone_they_went_in(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'guitars.db'}")
    db.upgrade(engine)
    sessions = db.sessionmaker(engine)
    local = datetime(2026, 12, 2, 3, 0, tzinfo=UTC).astimezone(__import__("datetime").timezone(timedelta(hours=5)))
    with sessions.begin() as session:
        session.add(db.Answer(id="a", created_at=local, model_sha256="s", label="x", probability=0.5,
                              uncertain=False, in_scope=True, scores=[{"label": "x", "probability": 0.5}]))
    with sessions() as session:
        stored = session.scalar(select(db.Answer.created_at))
        assert stored == datetime(2026, 12, 2, 3, 0, tzinfo=UTC) and stored.tzinfo == UTC
        with pytest.raises(Exception, match="naive"):
            session.add(db.Answer(id="b", created_at=datetime(2026, 1, 1), model_sha256="s", label="x",
                                  probability=0.5, uncertain=False, in_scope=True, scores=[]))
            session.flush()
    assert sessions().scalar(select(func.count()).select_from(db.Answer)) == 1


# --- the app: answer ids, verdicts, photos -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(trained_run):
    """One loaded smoke model for every app of this file (each app would otherwise load its own)."""
    holder = ModelHolder(trained_run, "torch")
    assert holder.get() is not None
    return holder


@pytest.fixture
def make_app(trained_run, served, tmp_path):
    """Apps on the smoke model with their own SQLite file and photo folder; `overrides` change the config."""
    def make(**overrides):
        app = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch",
                          "WTF_CSRF_ENABLED": False, "DATABASE_URL": f"sqlite:///{tmp_path / 'guitars.db'}",
                          "FEEDBACK_DIR": str(tmp_path / "feedback"), **overrides})
        app.extensions[MODEL] = served
        return app
    return make


@pytest.fixture
def photos(demo_data) -> list[bytes]:
    return [photo_with_gps(p) for p in sorted(demo_data.rglob("*.jpg"))[:2]]


def predict(client, images: list[bytes], **form):
    return client.post("/api/v1/predict", data={"file": [upload(b, f"p{i}.jpg") for i, b in enumerate(images)], **form},
                       content_type="multipart/form-data")


def stored(app) -> list[Path]:
    folder = Path(app.config["FEEDBACK_DIR"])
    return sorted(folder.glob("*.jpg")) if folder.is_dir() else []


def rows(app, model) -> list:
    with db.database(app).sessions() as session:
        return list(session.scalars(select(model)))


def photo_store_of(app):
    return app.extensions[PHOTOS]


ANSWER = object()  # stands for the id of the answer a test has just been given


def feedback(client, **body):
    return client.post("/api/v1/feedback", json=body)


def test_every_answer_is_logged_with_the_id_its_result_carries_and_no_photo_without_consent(make_app, photos):
    app = make_app()
    body = predict(app.test_client(), photos, top_k="2").json
    answers = {a.id: a for a in rows(app, db.Answer)}
    assert [r["id"] for r in body["results"]] and set(answers) == {r["id"] for r in body["results"]}
    for result in body["results"]:
        answer = answers[result["id"]]
        assert answer.label == result["predictions"][0]["label"]
        assert answer.probability == result["predictions"][0]["probability"]
        assert answer.scores == [{"label": p["label"], "probability": p["probability"]} for p in result["predictions"]]
        assert (answer.uncertain, answer.in_scope) == (result["uncertain"], result["in_scope"])
        assert (answer.scope, answer.group_label) == (result["scope"], (result["group"] or {}).get("label"))
        assert answer.model_sha256 == body["model"]["sha256"] and answer.created_at.tzinfo == UTC
        assert answer.photo is None
    assert stored(app) == [] and not Path(app.config["FEEDBACK_DIR"]).exists()


def test_a_shared_photo_is_kept_reencoded_without_exif_or_gps_at_most_1024_px_under_a_random_name(make_app, photos):
    app = make_app()
    results = predict(app.test_client(), photos, share="true").json["results"]
    files = stored(app)
    assert len(files) == 2
    by_name = {a.photo: a for a in rows(app, db.Answer)}
    assert set(by_name) == {f.name for f in files} and {a.id for a in by_name.values()} == {r["id"] for r in results}
    for path in files:
        assert re.fullmatch(r"[0-9a-f]{32}\.jpg", path.name)
        data = path.read_bytes()
        assert b"SpyCam" not in data and b"Exif" not in data
        with Image.open(path) as image:
            assert image.format == "JPEG" and max(image.size) == 1024 and image.size == (1024, 768)
            assert not image.getexif() and "exif" not in image.info and "icc_profile" not in image.info


def test_share_takes_the_form_checkbox_and_refuses_what_is_not_a_yes_or_no(make_app, photos):
    app = make_app()
    client = app.test_client()
    assert predict(client, photos[:1], share="on").status_code == 200
    assert predict(client, photos[:1], share="false").status_code == 200
    refused = predict(client, photos[:1], share="maybe")
    assert refused.status_code == 400 and refused.json["error"]["code"] == "bad_share"
    assert len(stored(app)) == 1 and len(rows(app, db.Answer)) == 2


def test_verdicts_right_wrong_and_none_of_these_are_kept_and_correct_is_decided_by_the_server(make_app, photos,
                                                                                            demo_data):
    app = make_app()
    client = app.test_client()
    plain = [p.read_bytes() for p in sorted(demo_data.rglob("*.jpg"))[:8]]
    in_scope = [r for r in predict(client, plain).json["results"] if r["in_scope"]]
    assert in_scope, "the smoke model answers most of its own photos as in scope"
    results = [in_scope[0], *predict(client, photos).json["results"]]
    top = results[1]["predictions"][0]["label"]
    other = next(c for c in SMOKE_CLASSES if c != top)
    right = feedback(client, id=results[0]["id"], correct=True)
    wrong = feedback(client, id=results[1]["id"], label=other)
    none = feedback(client, id=results[2]["id"], none_of_these=True)
    assert [r.status_code for r in (right, wrong, none)] == [201, 201, 201]
    assert right.json == {**right.json, "correct": True, "label": results[0]["predictions"][0]["label"]}
    assert wrong.json == {**wrong.json, "correct": False, "label": other, "none_of_these": False}
    assert none.json == {**none.json, "correct": not results[2]["in_scope"], "label": None, "none_of_these": True}
    kept = {v.answer_id: v for v in rows(app, db.Verdict)}
    assert kept[results[1]["id"]].label == other and kept[results[2]["id"]].none_of_these
    assert all(v.created_at.tzinfo == UTC and v.reviewed_at is None for v in kept.values())


@pytest.mark.parametrize("body, status, code", [
    ({"id": "no-such-answer", "correct": True}, 404, "unknown_answer"),
    ({"label": "stratocaster"}, 400, "bad_feedback"),  # no id
    ({"id": ANSWER, "correct": False}, 400, "bad_feedback"),  # wrong, but not what it is
    ({"id": ANSWER, "label": "gibson_sg"}, 422, "unknown_label"),  # a class of some other model
    ({"id": ANSWER, "label": "stratocaster", "none_of_these": True}, 400, "bad_feedback"),
    ({"id": ANSWER, "none_of_these": "yes"}, 400, "bad_feedback"),
    ({"id": 7, "correct": True}, 400, "bad_feedback"),
])
def test_a_refused_verdict_gets_a_clear_4xx_and_changes_nothing(make_app, photos, body, status, code):
    app = make_app()
    client = app.test_client()
    (result,) = predict(client, photos[:1], share="1").json["results"]
    response = feedback(client, **{k: result["id"] if v is ANSWER else v for k, v in body.items()})
    assert (response.status_code, response.json["error"]["code"]) == (status, code)
    assert rows(app, db.Verdict) == [] and len(stored(app)) == 1 and len(rows(app, db.Answer)) == 1


def test_a_replayed_verdict_is_409_keeps_the_first_and_the_photo_is_stored_once(make_app, photos):
    app = make_app()
    client = app.test_client()
    (result,) = predict(client, photos[:1], share="true").json["results"]
    assert feedback(client, id=result["id"], label="les_paul").status_code == 201
    replays = [feedback(client, id=result["id"], none_of_these=True) for _ in range(3)]
    assert {(r.status_code, r.json["error"]["code"]) for r in replays} == {(409, "already_answered")}
    (verdict,) = rows(app, db.Verdict)
    assert verdict.label == "les_paul" and not verdict.none_of_these
    assert len(stored(app)) == 1 and len(rows(app, db.Answer)) == 1


def test_a_body_that_is_not_a_json_object_is_400(make_app):
    client = make_app().test_client()
    for data in (b"[1, 2]", b"not json", b""):
        response = client.post("/api/v1/feedback", data=data, content_type="application/json")
        assert (response.status_code, response.json["error"]["code"]) == (400, "bad_feedback")


def test_the_results_page_has_one_csrf_checked_form_per_photo_and_the_upload_page_asks_for_consent(make_app, photos):
    app = make_app(WTF_CSRF_ENABLED=True)
    client = app.test_client()
    index = client.get("/").get_data(as_text=True)
    assert 'name="share"' in index and "Let these photos help improve the model" in index
    token = re.search(r'name="csrf_token" value="([^"]+)"', index).group(1)
    html = client.post("/predict", data={"file": [upload(b, f"p{i}.jpg") for i, b in enumerate(photos)],
                                         "csrf_token": token, "share": "on"},
                       content_type="multipart/form-data").get_data(as_text=True)
    actions = re.findall(r'<form class="verdict" action="/feedback/([^"]+)"', html)
    assert sorted(actions) == sorted(a.id for a in rows(app, db.Answer)) and len(actions) == 2
    assert len(stored(app)) == 2  # the checkbox is consent, as `share` is
    refused = client.post(f"/feedback/{actions[0]}", data={"verdict": "wrong", "label": "les_paul"})
    assert refused.status_code == 400 and rows(app, db.Verdict) == []  # no CSRF token
    thanks = client.post(f"/feedback/{actions[0]}", data={"verdict": "wrong", "label": "les_paul", "csrf_token": token})
    assert thanks.status_code == 200 and "Recorded: it is Les Paul" in thanks.get_data(as_text=True)
    again = client.post(f"/feedback/{actions[0]}", data={"verdict": "none", "csrf_token": token})
    assert again.status_code == 409 and "already has a verdict" in again.get_data(as_text=True)
    odd = client.post(f"/feedback/{actions[1]}", data={"verdict": "maybe", "csrf_token": token})
    assert odd.status_code == 400
    assert [(v.answer_id, v.label) for v in rows(app, db.Verdict)] == [(actions[0], "les_paul")]


def test_with_no_room_for_photos_the_upload_page_does_not_ask_and_share_is_refused(make_app, photos):
    app = make_app(FEEDBACK_MAX_MB=0)
    client = app.test_client()
    assert 'name="share"' not in client.get("/").get_data(as_text=True)
    refused = predict(client, photos, share="true")
    assert (refused.status_code, refused.json["error"]["code"]) == (507, "photo_store_full")
    assert "keeps no shared photos" in refused.json["error"]["message"]
    unread = predict(client, [b"not an image"], share="true")  # refused before any decoding
    assert (unread.status_code, unread.json["error"]["code"]) == (507, "photo_store_full")
    assert rows(app, db.Answer) == [] and stored(app) == []
    assert predict(client, photos).status_code == 200  # without sharing, answers as ever


def test_at_the_quota_a_request_that_shares_photos_is_refused_whole_and_nothing_is_kept(make_app, photos):
    one_photo = len(reencode(Image.open(io.BytesIO(photos[0]))))
    app = make_app(FEEDBACK_MAX_MB=2.5 * one_photo / MEGABYTE)
    client = app.test_client()
    assert predict(client, photos, share="true").status_code == 200  # two fit
    refused = predict(client, photos, share="true")  # two more don't: neither is kept
    assert (refused.status_code, refused.json["error"]["code"]) == (507, "photo_store_full")
    assert len(stored(app)) == 2 and len(rows(app, db.Answer)) == 2
    assert predict(client, photos[:1], share="true").status_code == 507  # the quota counts bytes, 2.5 photos' worth
    assert predict(client, photos).status_code == 200 and len(rows(app, db.Answer)) == 4


def test_photos_past_their_retention_are_deleted_reviewed_or_not_and_their_answers_forget_them(make_app, photos):
    app = make_app(FEEDBACK_RETENTION_DAYS=30)
    client = app.test_client()
    (old,) = predict(client, photos[:1], share="true").json["results"]
    assert feedback(client, id=old["id"], label="les_paul").status_code == 201
    store = photo_store_of(app)
    store.clock = lambda: datetime.now(UTC) + timedelta(days=29)
    (fresh,) = predict(client, photos[1:], share="true").json["results"]  # storing purges: nothing is 30 days old
    assert len(stored(app)) == 2
    store.clock = lambda: datetime.now(UTC) + timedelta(days=31)
    (last,) = predict(client, photos[1:], share="true").json["results"]
    answers = {a.id: a for a in rows(app, db.Answer)}
    assert answers[old["id"]].photo is None and answers[fresh["id"]].photo is None  # both were made a month ago
    assert [p.name for p in stored(app)] == [answers[last["id"]].photo]
    assert len(rows(app, db.Verdict)) == 1  # the verdict stays; only the photo goes


def test_the_answer_log_is_bounded_and_keeps_answers_with_a_verdict_or_a_photo(make_app, photos, monkeypatch):
    monkeypatch.setattr(db, "PRUNE_EVERY", 1)
    app = make_app(ANSWER_LOG_MAX_ROWS=3)
    client = app.test_client()
    (judged,) = predict(client, photos[:1]).json["results"]
    assert feedback(client, id=judged["id"], correct=True).status_code == 201
    (shared,) = predict(client, photos[:1], share="true").json["results"]
    later = [predict(client, photos[:1]).json["results"][0]["id"] for _ in range(4)]
    assert {a.id for a in rows(app, db.Answer)} == {judged["id"], shared["id"], later[-1]}


def test_feedback_shares_the_rate_limit_with_the_predictions(make_app, photos):
    client = make_app(RATE_LIMIT_PER_MINUTE=3).test_client()
    (result,) = predict(client, photos[:1]).json["results"]
    assert feedback(client, id=result["id"], label="les_paul").status_code == 201
    assert feedback(client, id=result["id"], correct=True).status_code == 409
    limited = feedback(client, id=result["id"], correct=True)
    assert (limited.status_code, limited.json["error"]["code"]) == (429, "too_many_requests")
    assert predict(client, photos[:1]).status_code == 429


def test_when_the_database_cannot_be_written_answers_go_out_without_ids_and_no_photo_stays(make_app, photos):
    app = make_app()
    db.database(app).migrate()  # as a served worker has at start: the tables go after it
    with db.database(app).engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE verdicts")
        connection.exec_driver_sql("DROP TABLE answers")
    response = predict(app.test_client(), photos, share="true")
    assert response.status_code == 200 and [r["id"] for r in response.json["results"]] == [None, None]
    assert stored(app) == []


def test_the_openapi_file_documents_the_feedback_route_the_ids_and_share(make_app):
    spec = make_app().test_client().get("/api/v1/openapi.json").json
    feedback_route = spec["paths"]["/api/v1/feedback"]["post"]
    assert {"201", "404", "409", "422"} <= set(feedback_route["responses"])
    assert "id" in spec["components"]["schemas"]["Result"]["properties"]
    predict_form = spec["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "share" in predict_form["schema"]["properties"] and "507" in spec["paths"]["/api/v1/predict"]["post"]["responses"]
