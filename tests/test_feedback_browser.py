"""The feedback loop in headless Chromium against a real gunicorn: two photos shared and judged, the wrong one accepted
on the review page into DATA/<class>/ without its EXIF, counted by the next `flask train` and by `flask feedback stats`;
photos sent without consent leave nothing behind."""
from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from tests.feedback_seed import photo_with_exif
from tests.helpers import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, ROOT, PageWatch, gunicorn_server
from training.runfiles import read_report
from webapp import create_app

TOKEN = "test-review-token"
pytestmark = [pytest.mark.slow, *BROWSER_MARKS]


def upload_photos(page, url, paths, share: bool) -> list[str]:
    """Upload `paths` on the front page (sharing them or not); the answer ids the results page's forms carry."""
    page.goto(url + "/")
    page.set_input_files("#file-input", [str(p) for p in paths])
    if share:
        page.check("input[name=share]")
    page.click("button[type=submit]")
    page.wait_for_selector("form.verdict")
    actions = page.eval_on_selector_all("form.verdict", "forms => forms.map(f => f.getAttribute('action'))")
    assert len(actions) == len(paths)
    return [action.rsplit("/", 1)[1] for action in actions]


def test_shared_photos_judged_in_the_browser_reach_the_training_data_once_accepted(trained_run, demo_data, tmp_path):
    from playwright.sync_api import sync_playwright

    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    photos = []
    for name in ("stratocaster", "les_paul"):  # real photos with a camera make and GPS, as a phone sends them
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(photo_with_exif(sorted((demo_data / name).glob("*.jpg"))[-1]))
        assert Image.open(path).getexif().get_ifd(0x8825)
        photos.append(path)
    database, store = f"sqlite:///{tmp_path / 'guitars.db'}", tmp_path / "feedback"
    env = {"GUITARS_DATABASE_URL": database, "GUITARS_FEEDBACK_DIR": str(store), "GUITARS_REVIEW_DATA": str(data),
           "GUITARS_REVIEW_TOKEN": TOKEN}
    with gunicorn_server(str(trained_run), ROOT, tmp_path / "gunicorn.log", **env) as (url, _), \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        watch = PageWatch(page)

        ids = upload_photos(page, url, photos, share=True)
        watch.assert_whole(page)
        assert len(list(store.glob("*.jpg"))) == 2
        forms = page.locator("form.verdict")
        forms.nth(0).locator("button[value=right]").click()
        page.wait_for_selector(".verdict-recorded")
        assert "the answer was right" in page.inner_text(".verdict-recorded")
        page.go_back()  # as the thanks page says: Back returns to the results, where the other photo waits
        page.wait_for_selector("form.verdict")
        second = page.locator("form.verdict").nth(1)
        options = second.locator("select[name=label] option").evaluate_all("os => os.map(o => o.value)")
        top = page.locator("table.top-k").nth(1).locator("th").first.get_attribute("title")
        chosen = next(label for label in options if label != top)
        second.locator("select[name=label]").select_option(chosen)
        second.locator("button[value=wrong]").click()
        page.wait_for_selector(".verdict-recorded")
        watch.assert_whole(page)

        before = sorted(store.glob("*.jpg"))  # the same photos sent without consent: nothing of them is kept
        private = upload_photos(page, url, photos, share=False)
        assert sorted(store.glob("*.jpg")) == before and not set(private) & set(ids)
        assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == [p.name for p in before]

        page.goto(f"{url}/review/?token={TOKEN}")  # no queue written: the review opens on the photos people sent
        page.wait_for_selector(f"#feedback-{ids[1]}")
        assert page.locator("article.feedback-photo").count() == 2
        watch.assert_whole(page)
        page.locator(f"#feedback-{ids[1]} button[value=accepted]").click()
        page.wait_for_selector("#feedback-count")
        assert page.locator(f"#feedback-{ids[1]}").count() == 0 and "1 photo shared" in page.inner_text("#feedback-count")
        watch.assert_whole(page)
        browser.close()

    added = data / chosen / f"feedback-{ids[1]}.jpg"
    with Image.open(added) as image:
        assert not image.getexif() and "exif" not in image.info and max(image.size) <= 1024
    assert list(data.rglob("feedback-*.jpg")) == [added]  # the right one waits, unaccepted, outside the data

    app = create_app({"TESTING": True, "DATABASE_URL": database, "FEEDBACK_DIR": str(store)})
    stats = app.test_cli_runner().invoke(args=["feedback", "stats", "--json"])
    assert stats.exit_code == 0, stats.output
    figures = json.loads(stats.output)
    assert figures["overall"]["verdicts"] == 2 and figures["overall"]["agreed"] == 1

    out = tmp_path / "run"
    trained = app.test_cli_runner().invoke(args=["train", "--data", str(data), "--recipe", "smoke", "--out", str(out),
                                                 "--no-progress"])
    assert trained.exit_code == 0, trained.output
    counts = read_report(out)["dataset"]
    assert counts["images"] == 42 + 1 and counts["counts"][chosen] == 14 + 1
