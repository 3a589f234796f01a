"""The web demo in headless Chromium (Playwright): upload an image, see the method's cut, ask, see the
streamed answer — the one the API gives — and SliME's kept local tokens drawn on the cut.

Needs the ``playwright`` package and a Chromium (Debian's ``chromium``; Playwright's own browser
download is not used). Without them the test skips, unless ``HIRES_VLM_REQUIRE_BROWSER`` is set
(``scripts/test.sh`` sets it when it installed Chromium): then it fails.
"""

from __future__ import annotations

import os
import shutil

import pytest
from serve_helpers import API_KEY, data_url, image_message, picture, png_bytes

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "What colour is the circle?"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium() -> str | None:
    explicit = os.environ.get("HIRES_VLM_CHROMIUM")
    if explicit:
        return explicit
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@pytest.fixture(scope="module")
def browser():
    required = bool(os.environ.get("HIRES_VLM_REQUIRE_BROWSER"))
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    executable = _chromium()
    if executable is None:
        missing.append("a Chromium executable (apt-get install chromium, or HIRES_VLM_CHROMIUM=PATH)")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if required:
            pytest.fail(message + " (HIRES_VLM_REQUIRE_BROWSER is set)")
        pytest.skip(message)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu",
                                                                "--disable-dev-shm-usage"])
        yield b
        b.close()


def test_upload_ask_and_see_the_cut(browser, main_server, client, model_id, tmp_path):
    image_file = tmp_path / "circle.png"
    image_file.write_bytes(png_bytes(picture()))
    api = client.chat.completions.create(model=model_id, messages=[image_message(PROMPT, data_url(png_bytes()))],
                                         max_tokens=64, temperature=0)
    kept = api.hires_vlm["images"][0]["kept_local_tokens"]

    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.set_default_timeout(30_000)
    page.goto(main_server.url + "/")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('model').textContent.includes('slime')")
    assert "401" in " ".join(errors) or not errors  # the page's first look, before the key was typed
    errors.clear()

    page.set_input_files("#image-input", str(image_file))
    page.wait_for_selector("#cut-figure[data-router='none']", state="visible")
    info = page.inner_text("#cut-info")
    assert "3 columns x 2 rows" in info and "7: 1 global, 6 tile" in info and "161 at most" in info
    assert page.evaluate("document.getElementById('cut-figure').naturalWidth") > 300  # the PNG decoded

    page.fill("#prompt", PROMPT)
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-done='1']")
    assert page.text_content(".msg.assistant .text") == api.choices[0].message.content
    assert f"{api.usage.completion_tokens} tokens" in page.inner_text(".msg.assistant .meta")
    page.wait_for_selector("#cut-figure[data-router='shown']")
    assert f"kept {len(kept)} of 96 local tokens" in page.inner_text("#cut-info")

    page.fill("#prompt", "And the background?")  # a second turn: the conversation goes on
    page.click("#send")
    page.wait_for_function("document.querySelectorAll(\".msg.assistant[data-done='1']\").length === 2")
    assert page.locator(".msg.error").count() == 0
    assert errors == []
    page.close()
