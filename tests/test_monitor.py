"""The monitor: a known answer log gives known figures on /api/v1/monitor and the page, a warning only past the
drift rule, and pictures that are real PNGs; all on a fake clock. Only the operator, with the review page's token,
sees any of it."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image
from sqlalchemy import delete

from tests.helpers import upload
from webapp.db import Answer, Verdict, database
from webapp.model import model_holder
from webapp.monitor import DriftRule, expectations, total_variation, warnings
from webapp.security import TOKEN_KEY, token_digest

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
OTHER_SHA = "f" * 64
# The validation figures the test's copy of the run reports (report.json documents; the SHA covers export.pkl only).
VALID_N, VALID_UNSURE, VALID_REJECTED = 20, 2, 0.05
COUNTS = {"flying_v": 10, "les_paul": 20, "stratocaster": 10}
TOKEN = "operator-token"


@pytest.fixture(scope="module")
def monitor_app(trained_run, tmp_path_factory):
    """An app of its own (its own database) serving a copy of the smoke run with known validation figures."""
    from webapp import create_app

    run = tmp_path_factory.mktemp("monitor") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    report = json.loads((run / "report.json").read_text())
    report["validation"]["n"] = VALID_N
    report["calibration"]["unsure_share"] = VALID_UNSURE / VALID_N
    report["scope"]["valid_rejected"] = VALID_REJECTED
    report["dataset"]["counts"] = COUNTS
    (run / "report.json").write_text(json.dumps(report))
    review_data = tmp_path_factory.mktemp("review-data")  # the review page too: its login and the monitor's are one
    return create_app({"TESTING": True, "MODEL_PATH": str(run), "RUNTIME": "torch", "WTF_CSRF_ENABLED": False,
                       "MONITOR_CLOCK": lambda: NOW, "REVIEW_TOKEN": TOKEN, "REVIEW_DATA": str(review_data)})


@pytest.fixture
def mclient(monitor_app):
    """The operator's browser: an empty answer log, and the token shown once."""
    with monitor_app.app_context():
        session = database().sessions()
        session.execute(delete(Verdict))
        session.execute(delete(Answer))
        session.commit()
        session.close()
    client = monitor_app.test_client()
    assert client.get(f"/api/v1/monitor?token={TOKEN}").status_code == 200
    return client


def add_answers(app, *groups) -> None:
    """Rows as service.py logs them: (n, age, uncertain, in_scope, label[, sha]) each group."""
    with app.app_context():
        served = model_holder().get().sha256
        session = database().sessions()
        for n, age, uncertain, in_scope, label, *sha in groups:
            session.add_all(Answer(created_at=NOW - age, model_sha256=sha[0] if sha else served, label=label,
                                   probability=0.4 if uncertain else 0.9, uncertain=uncertain, in_scope=in_scope,
                                   scores=[{"label": label, "probability": 0.9}]) for _ in range(n))
        session.commit()
        session.close()


def inline_png(html: str, element_id: str) -> bytes:
    """The PNG an <img id=...> of the page carries inline."""
    found = re.search(rf'<img id="{element_id}" class="wide" src="data:image/png;base64,([^"]+)"', html)
    assert found, f"no inline picture #{element_id}"
    data = base64.b64decode(found.group(1))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data


MIN = timedelta(minutes=1)
KNOWN_LOG = [
    (6, 10 * MIN, False, True, "les_paul"),
    (4, 30 * MIN, True, False, "stratocaster"),  # out of scope and not sure
    (1, 0 * MIN, False, True, "stratocaster"),  # at the clock's very second: the last hour
    (1, 60 * MIN, True, True, "flying_v"),  # one hour old exactly: the day's, not the hour's
    (12, 5 * 60 * MIN, True, True, "les_paul"), (4, 5 * 60 * MIN, False, True, "les_paul"),
    (16, 5 * 60 * MIN, False, True, "stratocaster"), (16, 5 * 60 * MIN, False, True, "flying_v"),
    (40, 3 * 24 * 60 * MIN, False, True, "stratocaster"), (20, 3 * 24 * 60 * MIN, False, False, "les_paul"),
    (5, 8 * 24 * 60 * MIN, True, False, "les_paul"),  # older than a week: not counted
    (2, -1 * MIN, True, False, "les_paul"),  # after the clock: not counted
    (7, 10 * MIN, True, False, "les_paul", OTHER_SHA),  # another model's: counted apart
]


def test_figures_match_the_answer_log(monitor_app, mclient):
    add_answers(monitor_app, *KNOWN_LOG)
    m = mclient.get("/api/v1/monitor").json
    assert m["now"] == NOW.isoformat()
    assert m["validation"]["n"] == VALID_N and m["validation"]["not_sure"] == pytest.approx(VALID_UNSURE / VALID_N)
    assert m["validation"]["out_of_scope"] == VALID_REJECTED
    assert m["validation"]["class_mix"] == {"flying_v": 0.25, "les_paul": 0.5, "stratocaster": 0.25}
    hour, day, week = (m["windows"][w] for w in ("hour", "day", "week"))
    assert (hour["answers"], hour["not_sure"]["count"], hour["out_of_scope"]["count"], hour["other_models"]) == (
        11, 4, 4, 7)
    assert (day["answers"], day["not_sure"]["count"], day["out_of_scope"]["count"]) == (60, 17, 4)
    assert (week["answers"], week["not_sure"]["count"], week["out_of_scope"]["count"]) == (120, 17, 24)
    assert week["other_models"] == 7
    assert week["out_of_scope"]["share"] == pytest.approx(0.2)
    assert week["out_of_scope"]["ratio"] == pytest.approx(0.2 / VALID_REJECTED)
    assert hour["class_mix"]["live"] == pytest.approx({"les_paul": 6 / 7, "stratocaster": 1 / 7})
    assert week["class_mix"]["answers"] == 96
    assert week["class_mix"]["distance"] == pytest.approx((abs(22 / 96 - .5) + abs(57 / 96 - .25)
                                                           + abs(17 / 96 - .25)) / 2)
    # Hour by hour, the newest hour is the hour window and the last 24 are the day's.
    hourly = m["hourly"]
    assert len(hourly) == 7 * 24 and hourly[-1]["start"] == (NOW - timedelta(hours=1)).isoformat()
    assert hourly[-1]["answers"] == 11 and sum(b["answers"] for b in hourly[-24:]) == 60
    assert sum(b["answers"] for b in hourly) == 120 and sum(b["out_of_scope"] for b in hourly) == 24
    assert hourly[-6]["answers"] == 48  # five hours before the clock: (now - 6 h, now - 5 h]


def test_a_warning_only_past_the_rule(monitor_app, mclient, monkeypatch):
    add_answers(monitor_app, *KNOWN_LOG)
    # The hour's out-of-scope share is 7x validation's, but over 11 answers (< 50); the day stays under 3x and
    # within 0.3 of the training mix; the week is 4x out of scope and 0.34 from the training mix.
    said = {(w["window"], w["kind"]) for w in mclient.get("/api/v1/monitor").json["warnings"]}
    assert said == {("week", "out_of_scope"), ("week", "class_mix")}
    page = mclient.get("/monitor").get_data(as_text=True)
    assert page.count('class="drift-warning') == 2 and "4.0 times the 5% of the validation photos" in page
    monkeypatch.setitem(monitor_app.config, "DRIFT_MIN_ANSWERS", 11)
    said = {(w["window"], w["kind"]) for w in mclient.get("/api/v1/monitor").json["warnings"]}
    assert ("hour", "out_of_scope") in said and ("hour", "not_sure") in said  # 4/11 against 10%: 3.6x
    page = mclient.get("/monitor").get_data(as_text=True)  # one warning a kind, the hour's, naming the week too
    assert page.count('data-kind="out_of_scope"') == 1 and "Also over the last 7 days." in page
    monkeypatch.setitem(monitor_app.config, "DRIFT_RATIO", 8.0)
    monkeypatch.setitem(monitor_app.config, "DRIFT_CLASS_DISTANCE", 0.9)
    assert mclient.get("/api/v1/monitor").json["warnings"] == []
    assert 'class="no-drift"' in mclient.get("/monitor").get_data(as_text=True)


def test_no_warning_on_traffic_like_validation(monitor_app, mclient):
    """60 answers at validation's rates and mix: nothing to say."""
    add_answers(monitor_app, (3, 20 * MIN, False, False, "les_paul"), (6, 2 * 60 * MIN, True, True, "les_paul"),
                (21, 2 * 60 * MIN, False, True, "les_paul"), (15, 3 * 60 * MIN, False, True, "flying_v"),
                (15, 3 * 60 * MIN, False, True, "stratocaster"))
    m = mclient.get("/api/v1/monitor").json
    assert m["windows"]["day"]["answers"] == 60 and m["warnings"] == []


def test_the_rule_at_its_edges():
    rule = DriftRule(ratio=3.0, min_answers=50, class_distance=0.3)

    def window(n, out, unsure, expected_out, expected_unsure, distance=0.0):
        from webapp.monitor import rate

        return {"answers": n, "out_of_scope": rate(out, n, expected_out), "not_sure": rate(unsure, n, expected_unsure),
                "class_mix": {"answers": n - out, "distance": distance}}

    assert [w["kind"] for w in warnings({"day": window(50, 15, 0, 0.1, None)}, rule)] == ["out_of_scope"]  # 3x
    assert warnings({"day": window(50, 14, 0, 0.1, None)}, rule) == []  # 2.8x
    assert warnings({"day": window(49, 49, 0, 0.1, None)}, rule) == []  # too few answers
    # A validation split that rejected none: the ratio is against 2%, so 3 in 50 (6%) is the line.
    assert [w["kind"] for w in warnings({"day": window(50, 3, 0, 0.0, None)}, rule)] == ["out_of_scope"]
    assert warnings({"day": window(50, 2, 0, 0.0, None)}, rule) == []
    assert [w["kind"] for w in warnings({"week": window(60, 0, 40, 0.05, 0.2)}, rule)] == ["not_sure"]
    assert [w["kind"] for w in warnings({"week": window(60, 0, 0, 0.05, None, 0.31)}, rule)] == ["class_mix"]
    assert warnings({"week": window(60, 0, 0, 0.05, None, 0.3)}, rule) == []
    assert total_variation({"a": 1.0}, {"b": 1.0}) == 1.0 and total_variation({"a": .5, "b": .5}, {"a": .5, "b": .5}) == 0


def test_validation_expectations_say_what_they_cannot_know():
    report = {"validation": {"n": 10}, "groups": {"n": 10, "unsure": 3}, "scope": {"valid_rejected": 0.1},
              "dataset": {"counts": {"a": 1, "b": 3}}}
    known = expectations(report, 0.4, 0.4)
    assert known["not_sure"] == pytest.approx(0.3) and known["out_of_scope"] == 0.1
    assert known["class_mix"] == {"a": 0.25, "b": 0.75}
    overridden = expectations(report, 0.6, 0.4)  # GUITARS_UNSURE_BELOW moved the line
    assert overridden["not_sure"] is None and "GUITARS_UNSURE_BELOW" in overridden["not_sure_unknown"]
    partly = expectations({**report, "groups": {"n": 6, "unsure": 3}}, 0.4, 0.4)  # groups cover some classes only
    assert partly["not_sure"] is None and partly["not_sure_unknown"]
    assert expectations({"validation": {"n": 10}}, 0.4, 0.4)["not_sure"] is None
    measured = expectations({**report, "groups": {}, "calibration": {"unsure_share": 0.2}}, 0.4, 0.4)
    assert measured["not_sure"] == 0.2  # the share training records, for a model with or without groups
    assert expectations({"validation": {"n": 10}}, 0.4, 0.4)["out_of_scope"] is None  # a detector, no figure
    assert expectations({"validation": {"n": 10}}, 0.4, 0.4, has_detector=False)["out_of_scope"] == 0.0


def test_the_page_shows_the_figures_and_its_pictures(monitor_app, mclient):
    add_answers(monitor_app, *KNOWN_LOG)
    page = mclient.get("/monitor")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert '<td class="num" data-window="week" data-figure="answers">120</td>' in html
    assert '<td class="num" data-window="hour" data-figure="other_models">7</td>' in html
    assert "20.0%" in html  # the week's out-of-scope share
    for name in ("traffic-day", "traffic-week", "class-mix"):
        with Image.open(io.BytesIO(inline_png(html, name))) as image:
            image.verify()
            assert image.size[0] > 600 and image.size[1] > 150
    assert 'href="/monitor"' in mclient.get("/").get_data(as_text=True)  # in the nav
    assert 'href="/monitor"' in mclient.get("/model").get_data(as_text=True)
    assert "/api/v1/monitor" in mclient.get("/api/v1/openapi.json").json["paths"]


def test_only_the_operator_sees_the_monitor(monitor_app):
    anonymous = monitor_app.test_client()
    page, figures = anonymous.get("/monitor"), anonymous.get("/api/v1/monitor")
    assert page.status_code == 403 and "/monitor?token=" in page.get_data(as_text=True)
    assert figures.status_code == 403 and figures.json["error"]["code"] == "forbidden"
    assert "/api/v1/monitor?token=" in figures.json["error"]["message"] and "windows" not in figures.json
    assert anonymous.get(f"/api/v1/monitor?token={TOKEN}x").status_code == 403
    assert 'href="/monitor"' not in anonymous.get("/").get_data(as_text=True)  # no link to a page that refuses
    let_in = anonymous.get(f"/monitor?token={TOKEN}")  # the page drops the token from its address at once
    assert let_in.status_code == 302 and let_in.headers["Location"] == "/monitor"
    assert anonymous.get("/monitor").status_code == 200
    assert anonymous.get("/api/v1/monitor").json["windows"]  # the session remembers it, for the JSON too
    with anonymous.session_transaction() as kept:  # the signed (not encrypted) cookie holds a digest, never the token
        assert kept[TOKEN_KEY] == token_digest(TOKEN) and TOKEN not in json.dumps(dict(kept))
    assert 'href="/monitor"' in anonymous.get("/").get_data(as_text=True)
    # One login for the review page and the monitor, each way round.
    reviewer = monitor_app.test_client()
    assert reviewer.get(f"/review/?token={TOKEN}").status_code == 404  # let in: no review queue written yet
    assert reviewer.get("/api/v1/monitor").status_code == 200
    assert anonymous.get("/review/").status_code == 404  # not 403
    assert monitor_app.test_client().get("/review/").status_code == 403


def test_without_a_token_the_monitor_is_off_and_says_how_to_turn_it_on(client):
    """The session app sets no GUITARS_REVIEW_TOKEN: the monitor is absent, as the review page is then."""
    for path in ("/monitor", "/api/v1/monitor", "/monitor?token=anything"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "set GUITARS_REVIEW_TOKEN" in response.get_data(as_text=True), path
    assert client.get("/api/v1/monitor").json["error"]["code"] == "not_found"
    assert 'href="/monitor"' not in client.get("/").get_data(as_text=True)


def test_empty_log_draws_and_says_nothing(mclient):
    m = mclient.get("/api/v1/monitor").json
    assert all(w["answers"] == 0 and w["not_sure"]["share"] is None for w in m["windows"].values())
    assert m["warnings"] == []
    html = mclient.get("/monitor").get_data(as_text=True)
    assert all(inline_png(html, name) for name in ("traffic-day", "traffic-week", "class-mix"))


def test_answers_served_by_the_api_are_counted(monitor_app, mclient, demo_data, monkeypatch):
    """Through the path service.py logs by: a real prediction is on the monitor in the last hour."""
    monkeypatch.delitem(monitor_app.config, "MONITOR_CLOCK")  # the real clock, as served
    photo = next((demo_data / "les_paul").glob("*.jpg")).read_bytes()
    result = mclient.post("/api/v1/predict", data={"file": upload(photo, "lp.jpg")},
                          content_type="multipart/form-data").json["results"][0]
    hour = mclient.get("/api/v1/monitor").json["windows"]["hour"]
    assert hour["answers"] == 1 and hour["other_models"] == 0
    assert hour["not_sure"]["count"] == int(result["uncertain"])
    assert hour["out_of_scope"]["count"] == int(not result["in_scope"])
    if result["in_scope"]:
        assert hour["class_mix"]["live"] == {result["predictions"][0]["label"]: 1.0}


def known_counts(url: str) -> list[tuple]:
    """answer_counts over KNOWN_LOG in a fresh database at `url`."""
    from sqlalchemy.orm import Session

    from webapp.db import make_engine, upgrade
    from webapp.monitor import answer_counts

    engine = make_engine(url)
    upgrade(engine)
    try:
        with Session(engine) as session:
            session.add_all(Answer(created_at=NOW - age, model_sha256=sha[0] if sha else "served", label=label,
                                   probability=0.5, uncertain=uncertain, in_scope=in_scope, scores=[])
                            for n, age, uncertain, in_scope, label, *sha in KNOWN_LOG for _ in range(n))
            session.commit()
            return sorted(answer_counts(session, NOW, 7 * 24))
    finally:
        engine.dispose()


def test_postgresql_counts_as_sqlite_does():
    """The hour buckets are a CASE grouped by its output name: PostgreSQL must read them as SQLite does."""
    from tests import postgres

    if not postgres.available():
        pytest.skip("PostgreSQL is not installed (make postgres)")
    with postgres.postgres_server() as new_database:
        counts = known_counts("sqlite://")
        assert sum(c[5] for c in counts) == 127  # the week's 120 answers and the other model's 7
        assert known_counts(new_database()) == counts
