"""The web page in a real browser: headless Chromium (Playwright) against a real uvicorn server on a
loopback port, serving a tiny random model. Type a 上联, get 5 candidates with their form checks; a
<script> 上联 shows the API's error and injects nothing; the 藏头 mode works; the page fits a phone.

Set DUILIAN_SCREENSHOT_DIR to keep the screenshots somewhere to look at.
"""

import os
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    import duilian
    from duilian.model import build_model
    from duilian.serve import ServeConfig, create_app

    model_dir = tmp_path_factory.mktemp("tiny-model")
    build_model("tiny", seed=0).save_pretrained(model_dir)
    app = create_app(duilian.load(model_dir), ServeConfig(batch_wait_ms=2))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    outside = []  # any request that leaves the server would be a CDN or a leak
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(server) else None)
    page.on("dialog", lambda d: (outside.append("dialog: " + d.message), d.dismiss()))
    page.goto(server + "/")
    yield page
    assert outside == []
    context.close()


def screenshot_dir(tmp_path) -> Path:
    out = Path(os.environ.get("DUILIAN_SCREENSHOT_DIR", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_a_shanglian_gets_five_candidates_with_their_checks(page, tmp_path):
    page.fill("#upper", "海阔凭鱼跃")
    page.click("#go")
    cards = page.locator("#results li.candidate")
    cards.nth(4).wait_for()
    assert cards.count() == 5
    for i in range(5):
        card = cards.nth(i)
        text = card.locator(".text").inner_text()
        assert len(text.replace(" ", "")) == 5
        checks = card.locator(".checks li").all_inner_texts()
        labels = " ".join(checks)
        for label in ("字数", "标点", "重字", "避重", "尾字"):
            assert label in labels, checks
        assert card.locator(".checks li.tone").inner_text()[2] in "平仄?"
    assert page.locator("#error").is_hidden()
    # Fits a phone: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(screenshot_dir(tmp_path) / "phone-couplets.png"), full_page=True)


def test_a_script_shanglian_shows_the_error_and_injects_nothing(page, tmp_path):
    page.fill("#upper", '<script>alert(1)</script><img src=x onerror="alert(2)">春')
    page.click("#go")
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "only Chinese characters" in error.inner_text()
    assert "<script>" in error.inner_text()  # shown as text ...
    assert page.locator("#error script, #error img, #results *").count() == 0  # ... never as markup
    assert page.evaluate("document.scripts.length") == 1  # only /static/app.js
    page.screenshot(path=str(screenshot_dir(tmp_path) / "phone-error.png"), full_page=True)
    # The page and the server carry on.
    page.fill("#upper", "春风")
    page.click("#go")
    page.locator("#results li.candidate").nth(4).wait_for()
    assert error.is_hidden()


def test_acrostic_mode(page, tmp_path):
    page.click("#tab-acrostic")
    page.fill("#heads", "春福")
    page.select_option("#length", "5")
    page.click("#go-acrostic")
    cards = page.locator("#results li.candidate")
    cards.nth(4).wait_for()
    for i in range(cards.count()):
        upper, lower = cards.nth(i).locator(".text").all_inner_texts()
        assert upper.startswith("春") and lower.startswith("福") and len(upper) == len(lower) == 5
    page.screenshot(path=str(screenshot_dir(tmp_path) / "phone-acrostic.png"), full_page=True)


def test_docs_page_lists_the_endpoints_offline(page, server, tmp_path):
    page.goto(server + "/docs")
    page.locator("section.endpoint").first.wait_for()
    headings = " ".join(page.locator("section.endpoint h2").all_inner_texts())
    assert "POST /v1/couplets" in headings and "POST /v1/acrostic" in headings and "GET /healthz" in headings
    assert "upper *" in page.locator("section.endpoint").first.inner_text()  # the request fields
    page.screenshot(path=str(screenshot_dir(tmp_path) / "phone-docs.png"), full_page=True)
