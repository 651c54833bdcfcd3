"""Label decisions and the review queue: found by confident learning, walked in the browser, honoured by training."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests

from tests.helpers import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, ROOT, PageWatch, free_port, wait_ready
from training.dataset import scan_dataset
from training.labels import read_decisions, record_decision, undo_last_decision
from training.runfiles import read_report
from webapp import create_app

TOKEN = "test-review-token"


@pytest.fixture(scope="module")
def review_data(demo_data, tmp_path_factory):
    """The demo photos with planted problems, and the queue `flask dataset review` wrote for them."""
    data = tmp_path_factory.mktemp("review") / "data"
    shutil.copytree(demo_data, data)
    strat = sorted((data / "stratocaster").glob("*.jpg"))
    shutil.move(strat[0], data / "les_paul" / "was-a-strat.jpg")          # a wrong label
    shutil.copy(strat[1], data / "flying_v" / "copy-of-a-strat.jpg")       # the same photo in two classes
    (data / "flying_v" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    runner = create_app({"TESTING": True}).test_cli_runner()
    result = runner.invoke(args=["dataset", "review", "--data", str(data)])
    assert result.exit_code == 0, result.output
    return data, json.loads((data / "review-queue.json").read_text()), result.output


def test_the_queue_finds_the_planted_problems(review_data):
    data, queue, output = review_data
    entries = {e["path"]: e for e in queue["entries"]}
    wrong = entries["les_paul/was-a-strat.jpg"]
    assert "label_issue" in wrong["reasons"] and wrong["suggested"] == "stratocaster"
    strat_copy = sorted((data / "stratocaster").glob("*.jpg"))[0].relative_to(data).as_posix()
    assert "cross_class_duplicate" in entries["flying_v/copy-of-a-strat.jpg"]["reasons"]
    assert entries["flying_v/copy-of-a-strat.jpg"]["group"] == [strat_copy]
    assert entries["flying_v/broken.jpg"]["reasons"] == ["unreadable"]
    assert queue["photos"] == 42 + 1  # the readable ones: 3 x 14 drawn, plus the planted copy
    assert len(entries) < queue["photos"] / 2  # a queue, not the whole folder
    assert "les_paul/was-a-strat.jpg" in output and "review-queue.json" in output


def test_decisions_are_appended_undone_and_applied(tmp_path, demo_data):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    before = scan_dataset(data, progress=False)
    strat = sorted(p.relative_to(data).as_posix() for p in (data / "stratocaster").glob("*.jpg"))
    record_decision(data, strat[0], "relabel", "les_paul")
    record_decision(data, strat[1], "exclude")
    record_decision(data, strat[2], "keep")
    record_decision(data, strat[3], "exclude")
    assert undo_last_decision(data).path == strat[3]
    assert [(d.path, d.decision, d.label) for d in read_decisions(data)] == [
        (strat[0], "relabel", "les_paul"), (strat[1], "exclude", ""), (strat[2], "keep", "")]

    after = scan_dataset(data, progress=False)
    labels = {item.relpath: item.label for item in after.items}
    assert labels[strat[0]] == "les_paul" and strat[1] not in labels and labels[strat[2]] == "stratocaster"
    assert after.decisions.as_dict() == {"file": "labels.csv", "kept": 1, "relabelled": 1, "excluded": 1, "unmatched": 0}
    assert after.fingerprint() != before.fingerprint()  # a resumed run notices relabels
    (data / "labels.csv").unlink()  # deleting the file restores the folders' labels
    assert scan_dataset(data, progress=False).fingerprint() == before.fingerprint()


def test_evaluate_honours_the_decisions(runner, trained_run, tmp_path, demo_data):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    strat = sorted(p.relative_to(data).as_posix() for p in (data / "stratocaster").glob("*.jpg"))
    record_decision(data, strat[0], "exclude")
    record_decision(data, strat[1], "relabel", "les_paul")
    result = runner.invoke(args=["evaluate", "--model", str(trained_run), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["n"] == 41 and report["decisions"]["excluded"] == 1 and report["decisions"]["relabelled"] == 1
    assert report["per_class"]["les_paul"]["support"] == 15 and report["per_class"]["stratocaster"]["support"] == 12


def test_a_relabel_to_a_class_that_does_not_exist_is_a_clear_error(tmp_path, demo_data):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    (data / "labels.csv").write_text("path,decision,label,when\nstratocaster/x.jpg,relabel,banjo,\n")
    result = create_app({"TESTING": True}).test_cli_runner().invoke(args=["dataset", "check", "--data", str(data)])
    assert result.exit_code == 1 and "banjo" in result.output and "not a class folder" in result.output
    (data / "labels.csv").write_text("path,decision,label,when\nstratocaster/x.jpg,burn,,\n")
    result = create_app({"TESTING": True}).test_cli_runner().invoke(args=["dataset", "check", "--data", str(data)])
    assert result.exit_code == 1 and "line 2" in result.output


@pytest.fixture
def review_client(review_data, tmp_path):
    data, queue, _ = review_data
    (data / "labels.csv").unlink(missing_ok=True)
    app = create_app({"TESTING": True, "REVIEW_DATA": str(data), "REVIEW_TOKEN": TOKEN, "WTF_CSRF_ENABLED": False})
    yield app.test_client(), data, queue
    (data / "labels.csv").unlink(missing_ok=True)


def test_the_review_page_needs_the_token_and_serves_only_queued_photos(review_client):
    client, data, queue = review_client
    wrong = [e["path"] for e in queue["entries"]].index("les_paul/was-a-strat.jpg")
    assert client.get("/review/").status_code == 403
    assert client.get("/review/?token=wrong").status_code == 403
    assert client.get(f"/review/?token={TOKEN}").status_code == 302
    page = client.get(f"/review/{wrong}")
    assert page.status_code == 200 and b"was-a-strat.jpg" in page.data and b"Stratocaster" in page.data
    assert client.get("/review/photo/les_paul/was-a-strat.jpg").status_code == 200
    queued = {e["path"] for e in queue["entries"]} | {p for e in queue["entries"] for p in e["group"]}
    never_queued = next(p.relative_to(data).as_posix() for p in sorted(data.rglob("*.jpg"))
                        if p.relative_to(data).as_posix() not in queued)
    assert client.get(f"/review/photo/{never_queued}").status_code == 404
    assert client.get("/review/photo/../labels.csv").status_code == 404
    assert client.post(f"/review/{wrong}", data={"decision": "relabel", "label": "banjo"}).status_code == 400
    assert not (data / "labels.csv").exists()


def test_any_token_text_is_a_clean_refusal_and_the_session_never_holds_the_token(review_client):
    client, _, _ = review_client
    for token in ("é", "%00", "\u2603" * 40, ""):
        assert client.get("/review/", query_string={"token": token}).status_code == 403, token
    assert client.get("/review/", query_string={"token": TOKEN}).status_code == 302
    with client.session_transaction() as session:
        assert TOKEN not in repr(dict(session))  # the cookie is only signed: anyone holding it can read it
    assert client.get("/review/").status_code == 302  # and the digest it holds still lets the browser in


def test_the_page_is_not_there_unless_the_operator_turns_it_on(client):
    assert client.get("/review/").status_code == 404
    with pytest.raises(ValueError, match="token"):
        create_app({"TESTING": True, "REVIEW_DATA": "/tmp"})


@pytest.fixture
def review_server(review_data, tmp_path):
    """`flask review` as the operator starts it, on a free loopback port."""
    data, _, _ = review_data
    (data / "labels.csv").unlink(missing_ok=True)
    port = free_port()
    log = open(tmp_path / "review.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "review", "--data", str(data),
                             "--port", str(port), "--token", TOKEN], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "GUITARS_SECRET_KEY": "test-secret"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, time.monotonic() + 60, path="/healthz")  # the review page needs no model
        yield url, data
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        (data / "labels.csv").unlink(missing_ok=True)


def press_and_wait(page, key: str) -> None:
    """Press a review key and wait for the page it leads to."""
    with page.expect_navigation():
        page.keyboard.press(key)
    page.wait_for_load_state("networkidle")


@pytest.mark.slow
@BROWSER_MARKS[0]
@BROWSER_MARKS[1]
def test_relabel_exclude_undo_in_the_browser_then_training_honours_it(review_server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, data = review_server
    assert requests.get(url + "/review/", timeout=10).status_code == 403
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        watch = PageWatch(page)
        page.goto(f"{url}/review/?token={TOKEN}")
        watch.assert_whole(page)
        first = page.inner_text("figcaption")
        page.keyboard.press("1")  # choose the first class ...
        press_and_wait(page, "r")  # ... and relabel; the next photo is shown
        watch.assert_whole(page)
        second = page.inner_text("figcaption")
        press_and_wait(page, "x")
        third = page.inner_text("figcaption")
        press_and_wait(page, "x")
        press_and_wait(page, "u")  # the third photo's exclusion is taken back; its page is shown again
        assert page.inner_text("figcaption") == third
        assert "2 of" in page.inner_text("#review-count")
        watch.assert_whole(page)
        browser.close()
    decisions = [(d.path, d.decision, d.label) for d in read_decisions(data)]
    classes = json.loads((data / "review-queue.json").read_text())["classes"]
    assert decisions == [(first, "relabel", classes[0]), (second, "exclude", "")]

    out = tmp_path / "run"
    (data / "classes.toml").write_text('flying_v = "Gibson Flying V"\n')
    try:
        trained = create_app({"TESTING": True}).test_cli_runner().invoke(
            args=["train", "--data", str(data), "--recipe", "smoke", "--out", str(out), "--no-progress"])
    finally:
        (data / "classes.toml").unlink()
    assert trained.exit_code == 0, trained.output
    report = read_report(out)
    assert report["dataset"]["decisions"]["relabelled"] == 1 and report["dataset"]["decisions"]["excluded"] == 1
    assert report["names"]["flying_v"] == "Gibson Flying V" and report["names"]["les_paul"] == "Les Paul"
    split = {row["path"]: row["label"] for row in json.loads((out / "split.json").read_text())["items"]}
    assert split[first] == classes[0] and second not in split


def test_decisions_from_many_processes_at_once_are_all_kept(tmp_path, demo_data):
    import multiprocessing

    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    photos = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jpg"))[:24]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.starmap(record_decision, [(data, photo, "keep") for photo in photos])
    assert sorted(d.path for d in read_decisions(data)) == photos
