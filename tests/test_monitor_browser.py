"""The monitor in headless Chromium against gunicorn as `make run` starts it, with the operator's token set: refused
before the token, and after real uploads its pictures load and its numbers are the answer log's."""
import io
import math
import os
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from tests.helpers import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, PageWatch, screenshot_target
from webapp.db import Answer, make_engine

pytestmark = BROWSER_MARKS
GUITARS, DRAWINGS = 45, 15  # photos sent: enough (60) for the drift rule to judge, a quarter of them no guitar
TOKEN = "monitor-browser-token"


@pytest.fixture
def operator_token(monkeypatch):
    """GUITARS_REVIEW_TOKEN for the server: ask for it before make_run_server, which copies the environment."""
    monkeypatch.setenv("GUITARS_REVIEW_TOKEN", TOKEN)


def drawings(n: int) -> list[bytes]:
    """Stripes and noise: none of the classes."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        if i % 2:
            pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        else:
            stripes = (np.indices((96, 96)).sum(axis=0) // (2 + i % 5)) % 2 == 1
            pixels = np.where(stripes[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def logged(sha: str, since: datetime) -> tuple[int, int, int]:
    """The answer log's (answers, not sure, out of scope) of model `sha` since `since`: read from the database."""
    engine = make_engine(os.environ["GUITARS_DATABASE_URL"])  # the server's, set by conftest's isolated_cache
    try:
        with engine.connect() as connection:
            mine = select(func.count()).select_from(Answer).where(Answer.model_sha256 == sha,
                                                                   Answer.created_at > since)
            return tuple(connection.scalar(mine.where(*extra)) for extra in (
                (), (Answer.uncertain.is_(True),), (Answer.in_scope.is_(False),)))
    finally:
        engine.dispose()


def test_monitor_page_pictures_and_numbers(operator_token, make_run_server, demo_data, tmp_path):
    from playwright.sync_api import sync_playwright

    url = make_run_server
    shots, data = screenshot_target(tmp_path, demo_data)
    classes = sorted(p for p in data.iterdir() if p.is_dir())
    each = math.ceil(GUITARS / len(classes))
    photos = [(p.name, p.read_bytes(), "image/jpeg") for c in classes for p in sorted(c.glob("*.jpg"))[:each]]
    photos += [(f"drawing-{i}.png", b, "image/png") for i, b in enumerate(drawings(DRAWINGS))]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        watch = PageWatch(page)
        for name, body, mime in photos:  # real answers, logged by the server as it logs every answer
            response = page.request.post(url + "/api/v1/predict",
                                         multipart={"file": {"name": name, "mimeType": mime, "buffer": body}})
            assert response.ok, response.text()
        sha = page.request.get(url + "/api/v1/model").json()["sha256"]

        refused = page.goto(url + "/monitor")  # before the token: refused, saying how to get in
        assert refused.status == 403 and "/monitor?token=" in page.inner_text("main")
        assert page.locator('header a[href="/monitor"]').count() == 0
        watch.assert_whole(page, expected_status=403)
        assert page.request.get(url + "/api/v1/monitor").status == 403
        page.goto(url + f"/monitor?token={TOKEN}")  # once; the session cookie lets the browser in from then on
        assert page.url == url + "/monitor"  # the token is gone from the address bar (and from Referers)
        page.goto(url + "/model")
        assert page.locator('header a[href="/monitor"]').count() == 1
        with page.expect_navigation():
            page.click("p.monitor-link a")
        assert page.url == url + "/monitor"
        page.wait_for_selector("#monitor-table")
        watch.assert_whole(page)  # every picture decoded, nothing failed
        for picture in ("#traffic-day", "#traffic-week", "#class-mix"):
            assert page.locator(picture).evaluate("img => img.naturalWidth > 600 && img.naturalHeight > 150")
        now = datetime.now(UTC)
        figures = page.request.get(url + "/api/v1/monitor").json()
        for window, span in (("hour", timedelta(hours=1)), ("day", timedelta(days=1)), ("week", timedelta(days=7))):
            answers, unsure, out = logged(sha, now - span)
            cell = f'#monitor-table td[data-window="{window}"]'
            assert int(page.inner_text(cell + '[data-figure="answers"]')) == answers
            assert int(page.get_attribute(cell + '[data-figure="not_sure"]', "data-count")) == unsure
            assert int(page.get_attribute(cell + '[data-figure="out_of_scope"]', "data-count")) == out
            assert figures["windows"][window]["answers"] == answers
        assert logged(sha, now - timedelta(hours=1))[0] >= len(photos)
        # The warning is on the page exactly when the rule says so for these counts.
        rule, expected = figures["drift_rule"], figures["validation"]["out_of_scope"]
        answers, _, out = logged(sha, now - timedelta(hours=1))
        past = answers >= rule["min_answers"] and round(out / answers / max(expected, rule["rate_floor"]), 4) >= rule["ratio"]
        shown = page.locator('.drift-warning[data-window~="hour"][data-kind="out_of_scope"]').count()
        assert shown == int(past), (answers, out, expected)
        page.screenshot(path=str(shots / "monitor.png"), full_page=True)
        browser.close()
