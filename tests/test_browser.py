"""End to end in headless Chromium: upload a photo, see bars and heat map, open the model page."""
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (make browser)"),
]


def test_upload_results_and_model_page(server, demo_data, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _, _ = server
    shots = SHOTS if os.environ.get("GUITARS_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    photo = next((demo_data / "les_paul").glob("*.jpg"))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        errors = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(url + "/")
        page.set_input_files("#file-input", str(photo))
        assert photo.name in page.inner_text("#chosen")  # our script ran under the CSP
        page.screenshot(path=str(shots / "upload.png"))
        page.click("button[type=submit]")
        page.wait_for_selector("img.heat-map")
        assert page.locator("progress").count() == 3
        heat = page.locator("img.heat-map")
        assert heat.evaluate("img => img.complete && img.naturalWidth > 0")
        page.screenshot(path=str(shots / "results.png"), full_page=True)
        page.goto(url + "/model")
        matrix = page.locator("#confusion-matrix")
        matrix.wait_for()
        assert matrix.evaluate("img => img.complete && img.naturalWidth > 100")
        assert "Validation accuracy" in page.inner_text("main")
        page.screenshot(path=str(shots / "model.png"), full_page=True)
        browser.close()
    assert not [e for e in errors if "Content Security Policy" in e]
