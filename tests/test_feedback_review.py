"""Feedback photos on the review page: only behind the token, accepted into DATA/<class>/ or the "none of these"
folder, rejected into nothing, each decided once (Flask test client, real SQLite, real photo store and data)."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image
from sqlalchemy import select

from tests.feedback_seed import add, feedback_app, photo_with_exif
from tests.helpers import ROOT, free_port, wait_ready
from training.dataset import scan_dataset
from training.review import add_photo
from webapp import db
from webapp.photostore import EXTENSION as PHOTOS

TOKEN = "test-review-token"


@pytest.fixture
def review(demo_data, tmp_path):
    """A copy of the demo data under review, with three consented photos that have a verdict and one without."""
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    app = feedback_app(tmp_path, REVIEW_DATA=str(data), REVIEW_TOKEN=TOKEN)
    strat = sorted((demo_data / "stratocaster").glob("*.jpg"))
    photos = [Image.open(io.BytesIO(photo_with_exif(path))) for path in strat[:3]]
    assert all(photo.getexif().get_ifd(0x8825) for photo in photos)  # they came with GPS
    ids = {"wrong": add(app, "les_paul", "stratocaster", photos[0]),
           "right": add(app, "les_paul", "right", photos[1]),
           "none": add(app, "flying_v", None, photos[2]),
           "private": add(app, "flying_v", "stratocaster")}
    client = app.test_client()
    assert client.get(f"/review/feedback/?token={TOKEN}").status_code == 200
    return app, client, data, ids


def verdict(app, answer_id):
    with db.database(app).sessions() as session:
        return session.scalar(select(db.Verdict).where(db.Verdict.answer_id == answer_id))


def stored_photo(app, answer_id):
    with db.database(app).sessions() as session:
        return app.extensions[PHOTOS].path(session.get(db.Answer, answer_id).photo)


def test_feedback_photos_need_the_token(review):
    app, _, _, ids = review
    fresh = app.test_client()
    assert fresh.get("/review/feedback/").status_code == 403
    assert fresh.get(f"/review/feedback/photo/{ids['wrong']}").status_code == 403
    assert fresh.post(f"/review/feedback/{ids['wrong']}", data={"decision": "accepted"}).status_code == 403
    assert verdict(app, ids["wrong"]).reviewed_at is None


def test_the_page_lists_only_consented_photos_with_a_verdict_not_yet_reviewed(review):
    _, client, _, ids = review
    page = client.get("/review/feedback/").data.decode()
    assert "3 photos shared with consent wait" in page
    for key in ("wrong", "right", "none"):
        assert f'id="feedback-{ids[key]}"' in page
    assert ids["private"] not in page
    assert "wrong: it is stratocaster" in page and "data/stratocaster/" in page and "data-ood" in page
    assert client.get(f"/review/feedback/photo/{ids['wrong']}").mimetype == "image/jpeg"
    assert client.get(f"/review/feedback/photo/{ids['private']}").status_code == 404
    assert client.get("/review/feedback/photo/..%2Fguitars.db").status_code == 404
    assert client.get("/review/").headers["Location"].endswith("/review/feedback/")  # no queue yet: the photos


def test_accepting_copies_the_photo_without_exif_into_its_class_folder_once(review):
    app, client, data, ids = review
    before = scan_dataset(data, progress=False)
    response = client.post(f"/review/feedback/{ids['wrong']}", data={"decision": "accepted"})
    assert response.status_code == 302
    added = data / "stratocaster" / f"feedback-{ids['wrong']}.jpg"
    assert added.read_bytes() == stored_photo(app, ids["wrong"]).read_bytes()
    with Image.open(added) as image:
        assert not image.getexif() and "exif" not in image.info and max(image.size) <= 1024
    decided = verdict(app, ids["wrong"])
    assert decided.review_decision == "accepted" and decided.reviewed_at is not None
    after = scan_dataset(data, progress=False)
    assert len(after.items) == len(before.items) + 1  # the next `flask train` reads it
    assert not [p for p in data.rglob("*") if p.name.startswith(".")]  # no temporary file left behind
    assert client.post(f"/review/feedback/{ids['wrong']}", data={"decision": "accepted"}).status_code == 404
    assert client.get(f"/review/feedback/photo/{ids['wrong']}").status_code == 404
    assert len(list(data.rglob("feedback-*.jpg"))) == 1


def test_a_right_answer_goes_to_the_answered_class_and_none_of_these_to_the_ood_folder(review):
    app, client, data, ids = review
    client.post(f"/review/feedback/{ids['right']}", data={"decision": "accepted"})
    assert (data / "les_paul" / f"feedback-{ids['right']}.jpg").is_file()
    client.post(f"/review/feedback/{ids['none']}", data={"decision": "accepted"})
    ood = data.with_name("data-ood") / "feedback" / f"feedback-{ids['none']}.jpg"
    assert ood.is_file() and not list(data.rglob(f"feedback-{ids['none']}*"))
    assert "1 photo shared with consent waits" in client.get("/review/feedback/").data.decode()


def test_a_configured_ood_folder_is_used(review, tmp_path):
    app, _, _, ids = review
    app.config["FEEDBACK_OOD"] = str(tmp_path / "elsewhere")
    client = app.test_client()
    client.get(f"/review/feedback/?token={TOKEN}")
    client.post(f"/review/feedback/{ids['none']}", data={"decision": "accepted"})
    assert (tmp_path / "elsewhere" / "feedback" / f"feedback-{ids['none']}.jpg").is_file()


def test_rejecting_copies_nothing_and_marks_it_reviewed(review):
    app, client, data, ids = review
    files = sorted(data.rglob("*"))
    assert client.post(f"/review/feedback/{ids['wrong']}", data={"decision": "rejected"}).status_code == 302
    assert sorted(data.rglob("*")) == files and not data.with_name("data-ood").exists()
    assert verdict(app, ids["wrong"]).review_decision == "rejected"
    assert ids["wrong"] not in client.get("/review/feedback/").data.decode()


def test_bad_decisions_change_nothing(review):
    app, client, data, ids = review
    files = sorted(data.rglob("*"))
    assert client.post(f"/review/feedback/{ids['wrong']}", data={"decision": "keep"}).status_code == 400
    assert client.post(f"/review/feedback/{ids['private']}", data={"decision": "accepted"}).status_code == 404
    assert client.post("/review/feedback/no-such-id", data={"decision": "accepted"}).status_code == 404
    shutil.rmtree(data / "stratocaster")  # the person's class has no folder in this data
    files = sorted(data.rglob("*"))
    response = client.post(f"/review/feedback/{ids['wrong']}", data={"decision": "accepted"})
    assert response.status_code == 409 and b"no class folder" in response.data
    assert sorted(data.rglob("*")) == files and verdict(app, ids["wrong"]).reviewed_at is None


def test_the_queue_page_points_to_the_waiting_photos(review):
    _, client, data, _ = review
    entry = {"path": "les_paul/" + sorted((data / "les_paul").glob("*.jpg"))[0].name, "label": "les_paul",
             "reasons": ["label_issue"], "suggested": None, "suggested_p": None, "label_p": None, "quality": None,
             "group": [], "detail": None}
    names = {c: c for c in ("flying_v", "les_paul", "stratocaster")}
    (data / "review-queue.json").write_text(json.dumps({"classes": sorted(names), "names": names,
                                                        "entries": [entry]}))
    assert client.get("/review/").headers["Location"].endswith("/review/0")
    page = client.get("/review/0").data.decode()
    assert 'id="feedback-link"' in page and "3 photos people sent wait" in page


def test_add_photo_never_replaces_a_file(tmp_path):
    first = add_photo(tmp_path, "feedback-x", b"one")
    second = add_photo(tmp_path, "feedback-x", b"two")
    assert (first.name, second.name) == ("feedback-x.jpg", "feedback-x-2.jpg")
    assert first.read_bytes() == b"one" and second.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback-x-2.jpg", "feedback-x.jpg"]


def test_flask_evaluate_ood_scores_the_accepted_none_of_these_photos(review, trained_run):
    app, client, data, ids = review
    client.post(f"/review/feedback/{ids['none']}", data={"decision": "accepted"})
    result = app.test_cli_runner().invoke(args=["evaluate", "--model", str(trained_run), "--data", str(data),
                                                "--ood", str(data.with_name("data-ood")), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["out_of_scope"]["feedback"]["n"] == 1


@pytest.mark.slow
def test_flask_review_names_the_waiting_photos_and_its_pages_answer_at_once(review, tmp_path):
    """The command counts the photos before serving; its pages must not wait on a database lock it kept."""
    _, _, data, _ = review
    port, log = free_port(), open(tmp_path / "review.log", "w")
    env = {**os.environ, "GUITARS_SECRET_KEY": "test-secret", "GUITARS_DATABASE_URL": f"sqlite:///{tmp_path / 'guitars.db'}",
           "GUITARS_FEEDBACK_DIR": str(tmp_path / "feedback")}
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "review", "--data", str(data), "--port",
                             str(port), "--token", TOKEN], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, time.monotonic() + 60, path="/healthz")
        started = time.monotonic()
        with requests.Session() as browser:
            first = browser.get(f"{url}/review/?token={TOKEN}", allow_redirects=False, timeout=30)
            assert first.status_code == 302 and first.headers["Location"].endswith("/review/feedback/")
            assert "3 photos shared with consent wait" in browser.get(url + "/review/feedback/", timeout=30).text
        assert time.monotonic() - started < 5  # a lock held by the command would make each page wait 10 s
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "3 photos people sent wait beside the queue" in (tmp_path / "review.log").read_text()
