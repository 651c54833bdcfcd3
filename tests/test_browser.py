"""End to end in headless Chromium against gunicorn started as `make run` starts it: every page loads whole."""

import numpy as np
from PIL import Image

from tests.helpers import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, PageWatch, screenshot_target

pytestmark = BROWSER_MARKS

def test_every_page_loads_whole(make_run_server, demo_data, tmp_path):
    from playwright.sync_api import sync_playwright

    url = make_run_server
    shots, data = screenshot_target(tmp_path, demo_data)
    photos = [sorted((data / name).glob("*.jpg"))[-1] for name in ("les_paul", "stratocaster", "flying_v")]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        watch = PageWatch(page)

        page.goto(url + "/")
        page.set_input_files("#file-input", [str(p) for p in photos])
        assert photos[0].name in page.inner_text("#chosen")  # our script ran under the CSP
        watch.assert_whole(page)
        page.screenshot(path=str(shots / "upload.png"))

        page.click("button[type=submit]")
        page.wait_for_selector("img.heat-map")
        assert page.locator("img.heat-map").count() == len(photos)
        assert page.locator("progress").count() == 3 * len(photos)
        watch.assert_whole(page)
        page.screenshot(path=str(shots / "results.png"), full_page=True)

        noise = tmp_path / "stripes.png"  # none of the classes: said plainly, the nearest classes greyed out
        stripes = (np.indices((96, 96)).sum(axis=0) // 4) % 2 == 1
        Image.fromarray(np.where(stripes[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)).save(noise)
        page.goto(url + "/")
        page.set_input_files("#file-input", str(noise))
        page.click("button[type=submit]")
        page.wait_for_selector("p.out-of-scope")
        assert "doesn't look like any of the" in page.inner_text("p.out-of-scope")
        assert page.locator("table.top-k.greyed").count() == 1
        watch.assert_whole(page)
        page.screenshot(path=str(shots / "out-of-scope.png"), full_page=True)

        page.goto(url + "/model")
        matrix = page.locator("#confusion-matrix")
        assert matrix.count() == 1
        assert matrix.evaluate("img => img.naturalWidth > 100")
        assert "Validation accuracy" in page.inner_text("main")
        watch.assert_whole(page)
        page.screenshot(path=str(shots / "model.png"), full_page=True)

        response = page.goto(url + "/no-such-page")
        assert response.status == 404 and "Not found" in page.inner_text("main")
        watch.assert_whole(page, expected_status=404)
        browser.close()
