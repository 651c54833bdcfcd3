"""`flask feedback list | export | stats` and /model's "What people said", on a real SQLite file and photo store."""
from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from tests.feedback_seed import SHA_NEW, SHA_OLD, add, feedback_app
from webapp.feedback_stats import wilson


@pytest.fixture
def seeded(tmp_path):
    """Seven verdicts on two models: four right, two wrong with a class, one none of these; three with photos."""
    app = feedback_app(tmp_path)
    red, blue, grey = (Image.new("RGB", (64, 48), c) for c in ("red", "blue", "grey"))
    ids = {
        "strat_right": add(app, "stratocaster", "right", red, sha=SHA_OLD, minutes=1),
        "strat_wrong": add(app, "stratocaster", "les_paul", blue, minutes=2),
        "strat_right2": add(app, "stratocaster", "right", minutes=3),
        "lp_right": add(app, "les_paul", "right", minutes=4),
        "lp_wrong": add(app, "les_paul", "flying_v", minutes=5, reviewed="rejected"),
        "none": add(app, "flying_v", None, grey, minutes=6),
        "ood_right": add(app, "flying_v", "right", in_scope=False, minutes=7),
    }
    return app, ids


def invoke(app, *args):
    result = app.test_cli_runner().invoke(args=["feedback", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_stats_give_the_agreement_overall_per_class_and_per_model(seeded):
    app, _ = seeded
    stats = json.loads(invoke(app, "stats", "--json"))
    assert stats["overall"] | {} == {"verdicts": 7, "agreed": 4, "rate": round(4 / 7, 4),
                                     "low": round(wilson(4, 7)[0], 4), "high": round(wilson(4, 7)[1], 4)}
    per_class = {row["label"]: (row["verdicts"], row["agreed"]) for row in stats["per_class"]}
    # By the answer as served: the out-of-scope answer counts as "none of my classes", not as its top class.
    assert per_class == {"stratocaster": (3, 2), "les_paul": (2, 1), "flying_v": (1, 0), None: (1, 1)}
    per_model = [(row["model_sha256"], row["verdicts"], row["agreed"]) for row in stats["per_model"]]
    assert per_model == [(SHA_NEW, 6, 3), (SHA_OLD, 1, 1)]  # the latest model first
    text = invoke(app, "stats")
    assert "57% (95%" in text and "of 7 verdicts" in text and "(none of my classes)" in text
    assert SHA_OLD[:16] in text and SHA_NEW[:16] in text


def test_the_wilson_interval_is_wide_for_few_verdicts_and_narrow_for_many():
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(1, 1) == pytest.approx((0.2065, 1.0), abs=1e-4)  # one verdict says little
    assert wilson(900, 1000) == pytest.approx((0.8798, 0.9170), abs=1e-4)  # Wilson (1927), z = 1.96


def test_stats_of_an_empty_log(tmp_path):
    app = feedback_app(tmp_path)
    assert "of 0 verdicts" in invoke(app, "stats")
    assert json.loads(invoke(app, "stats", "--json"))["overall"]["verdicts"] == 0
    assert "No verdicts yet" in invoke(app, "list")


def test_list_shows_the_latest_verdicts_first_with_photo_and_review(seeded):
    app, ids = seeded
    lines = invoke(app, "list").splitlines()
    assert len(lines) == 1 + 7
    assert ids["ood_right"] in lines[1] and "none of my classes" in lines[1] and "right" in lines[1]
    wrong = next(line for line in lines if ids["strat_wrong"] in line)
    assert "stratocaster 80%" in wrong and "it is les_paul" in wrong and "kept" in wrong and wrong.endswith("-")
    assert next(line for line in lines if ids["lp_wrong"] in line).endswith("rejected")
    assert len(invoke(app, "list", "--limit", "2").splitlines()) == 3
    pending = invoke(app, "list", "--pending")
    assert {ids["strat_right"], ids["strat_wrong"], ids["none"]} == {i for i in ids.values() if i in pending}


def test_export_writes_the_consented_photos_by_label_and_every_verdict(seeded, tmp_path):
    app, ids = seeded
    out, ood = tmp_path / "export", tmp_path / "export-ood"
    assert "2 photos and 7 verdicts" in invoke(app, "export", "--out", str(out))
    photos = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert photos == sorted([f"stratocaster/{ids['strat_right']}.jpg", f"les_paul/{ids['strat_wrong']}.jpg"])
    assert Image.open(out / "les_paul" / f"{ids['strat_wrong']}.jpg").getpixel((5, 5))[2] > 200  # the blue one
    with open(out / "verdicts.csv", newline="") as fh:
        rows = {row["answer_id"]: row for row in csv.DictReader(fh)}
    assert set(rows) == set(ids.values())
    assert rows[ids["strat_wrong"]]["label"] == "les_paul" and rows[ids["strat_wrong"]]["correct"] == "False"
    assert rows[ids["none"]]["none_of_these"] == "True" and rows[ids["none"]]["photo"] == ""
    assert rows[ids["lp_wrong"]]["review_decision"] == "rejected" and rows[ids["strat_right2"]]["photo"] == ""
    invoke(app, "export", "--out", str(out), "--ood", str(ood))
    assert [p.name for p in ood.glob("*.jpg")] == [f"{ids['none']}.jpg"]


def test_no_photo_is_exported_without_consent_or_after_a_rejection(tmp_path):
    app = feedback_app(tmp_path)
    add(app, "stratocaster", "les_paul", Image.new("RGB", (32, 32), "red"), reviewed="rejected")
    add(app, "stratocaster", "les_paul")  # no consent: no photo was ever kept
    out = tmp_path / "export"
    assert "0 photos and 2 verdicts" in invoke(app, "export", "--out", str(out))
    assert not list(out.rglob("*.jpg"))


def test_the_model_page_shows_what_people_said(trained_run, tmp_path):
    app = feedback_app(tmp_path, MODEL_PATH=str(trained_run), RUNTIME="torch")
    client = app.test_client()
    assert b"No verdicts yet" in client.get("/model").data
    add(app, "stratocaster", "right")
    add(app, "stratocaster", "les_paul")
    add(app, "les_paul", "right")
    page = client.get("/model").data.decode()
    assert 'id="agreement-chart"' in page and "<rect" in page
    assert 'data-label="stratocaster" data-verdicts="2" data-rate="0.5"' in page
    assert 'data-label="les_paul" data-verdicts="1" data-rate="1.0"' in page
    assert "67%" in page and "in 3 verdicts" in page and "flask feedback stats" in page


def test_export_holds_no_database_lock_while_it_copies_photos(seeded, tmp_path, monkeypatch):
    import sqlite3

    from webapp import feedback_cli

    app, _ = seeded
    writable, atomic_path = [], feedback_cli.atomic_path

    def copy_while_a_worker_writes(target):
        connection = sqlite3.connect(tmp_path / "guitars.db", timeout=0, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")  # what a worker logging an answer does
            connection.execute("ROLLBACK")
            writable.append(True)
        except sqlite3.OperationalError:
            writable.append(False)
        finally:
            connection.close()
        return atomic_path(target)

    monkeypatch.setattr(feedback_cli, "atomic_path", copy_while_a_worker_writes)
    invoke(app, "export", "--out", str(tmp_path / "export"))
    assert writable and all(writable)
