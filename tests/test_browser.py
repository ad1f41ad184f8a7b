"""The web page in a real browser: headless Chromium (Playwright) against a real uvicorn server on a
loopback port, serving a tiny random model. Type a 上联, get 5 candidates with their form checks; a
<script> 上联 shows the API's error and injects nothing; the 藏头 mode works; the page fits a phone.
The chosen couplet hangs (上联 right, 下联 left, 横批 above read right to left), downloads as SVG and
PNG, and the page's SVG is the same string as duilian.hanging.couplet_svg's.

Set DUILIAN_SCREENSHOT_DIR to keep the screenshots somewhere to look at.
"""

import io
import json
import os
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from loopback import free_port, serving

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import duilian
    from duilian.model import build_model
    from duilian.serve import ServeConfig, create_app

    model_dir = tmp_path_factory.mktemp("tiny-model")
    model = build_model("tiny", seed=0)
    model.config.duilian = {"lines": {"forward": 10, "backward": 0, "keywords": 5}}  # it may compose
    model.save_pretrained(model_dir)
    app = create_app(duilian.load(model_dir), ServeConfig(port=free_port(), batch_wait_ms=2))
    with serving(app) as url:
        yield url


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
    scripts = page.evaluate("[...document.scripts].map((s) => new URL(s.src).pathname)")
    assert scripts == ["/static/hanging.js", "/static/app.js"]  # nothing injected
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
    # The first 藏头 couplet hangs: 春 heads the right column, 福 the left.
    upper, lower = cards.nth(0).locator(".text").all_inner_texts()
    assert hung_columns(page) == (upper, lower)
    page.screenshot(path=str(screenshot_dir(tmp_path) / "phone-acrostic.png"), full_page=True)


def test_embedded_characters_at_another_place(page):
    page.click("#tab-acrostic")
    page.fill("#heads", "伟娜")
    page.select_option("#position", "2")
    page.click("#go-acrostic")
    cards = page.locator("#results li.candidate")
    cards.nth(0).wait_for()
    for i in range(cards.count()):
        upper, lower = cards.nth(i).locator(".text").all_inner_texts()
        assert upper[1] == "伟" and lower[1] == "娜"
    # a place the character's tone forbids: the API's reason, no couplet
    page.select_option("#position", "last")
    page.click("#go-acrostic")
    page.locator("#error").wait_for()
    assert "娜 is oblique" in page.locator("#error").inner_text() and cards.count() == 0


def test_compose_mode_hangs_a_whole_couplet_about_the_words(page, tmp_path):
    sent = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/compose") else None)
    page.click("#tab-compose")
    assert page.locator("#form-compose").is_visible() and not page.locator("#form-couplet").is_visible()
    page.fill("#words", "春 福")
    page.select_option("#occasion", "春节")
    page.fill("#year", "2027")
    page.click("#go-compose")
    cards = page.locator("#results li.candidate")
    cards.nth(0).wait_for()
    assert sent[0]["words"] == ["春", "福"] and sent[0]["occasion"] == "春节" and sent[0]["year"] == 2027
    for i in range(cards.count()):
        upper, lower = cards.nth(i).locator(".text").all_inner_texts()
        assert len(upper) == len(lower) == 7
        assert "主题 春 福 羊" in cards.nth(i).locator(".themes").inner_text()
        assert cards.nth(i).locator("li.check.bad").count() == 0  # every check passes
        assert "词性相对" in cards.nth(i).locator("li.pos").inner_text()
    # the whole couplet hangs, with its three 横批 to choose from
    upper, lower = cards.nth(0).locator(".text").all_inner_texts()
    assert hung_columns(page) == (upper, lower)
    assert page.locator("#hengpi-choices button").count() == 3
    page.screenshot(path=str(screenshot_dir(tmp_path) / "phone-compose.png"), full_page=True)


def test_docs_page_lists_the_endpoints_offline(page, server, tmp_path):
    page.goto(server + "/docs")
    page.locator("section.endpoint").first.wait_for()
    headings = " ".join(page.locator("section.endpoint h2").all_inner_texts())
    assert "POST /v1/couplets" in headings and "POST /v1/acrostic" in headings and "GET /healthz" in headings
    assert "upper *" in page.locator("section.endpoint").first.inner_text()  # the request fields
    page.screenshot(path=str(screenshot_dir(tmp_path) / "phone-docs.png"), full_page=True)


# --- the couplet as it hangs ------------------------------------------------------------------------
SVG_NS = "{http://www.w3.org/2000/svg}"


def hung_columns(page) -> tuple[str, str]:
    """The characters drawn in the page's picture: (上联 column, 下联 column), each top to bottom."""
    page.locator("#picture svg g.lower text").first.wait_for()
    return tuple("".join(page.locator(f"#picture svg g.{name} text").all_text_contents())
                 for name in ("upper", "lower"))


def text_x(page, selector: str) -> list[float]:
    return page.eval_on_selector_all(selector, "nodes => nodes.map((n) => Number(n.getAttribute('x')))")


def card_texts(page) -> list[str]:
    return page.locator("#results li.candidate .text").all_inner_texts()


def test_the_chosen_couplet_hangs_and_another_can_be_chosen(page, tmp_path):
    page.fill("#upper", "海阔凭鱼跃")
    page.click("#go")
    page.locator("#results li.candidate").nth(4).wait_for()
    lowers = card_texts(page)
    # The first candidate hangs: 上联 in the right column, 下联 in the left, one <text> per character.
    assert hung_columns(page) == ("海阔凭鱼跃", lowers[0])
    upper_x, lower_x = text_x(page, "#picture g.upper text"), text_x(page, "#picture g.lower text")
    assert len(set(upper_x)) == len(set(lower_x)) == 1 and upper_x[0] > lower_x[0]
    ys = page.eval_on_selector_all("#picture g.upper text", "nodes => nodes.map((n) => Number(n.getAttribute('y')))")
    assert ys == sorted(ys) and len(set(ys)) == 5  # top to bottom
    assert page.locator("#results li.candidate").nth(0).get_attribute("aria-selected") == "true"
    # The picture fits a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.locator("#hanging").screenshot(path=str(screenshot_dir(tmp_path) / "phone-hanging.png"))
    # Choosing another candidate hangs that one instead.
    page.locator("#results li.candidate").nth(2).click()
    page.wait_for_function("(lower) => [...document.querySelectorAll('#picture g.lower text')]"
                           ".map((t) => t.textContent).join('') === lower", arg=lowers[2])
    assert hung_columns(page) == ("海阔凭鱼跃", lowers[2])
    selected = [page.locator("#results li.candidate").nth(i).get_attribute("aria-selected") for i in range(5)]
    assert selected == ["false", "false", "true", "false", "false"]
    # ... and so does the keyboard.
    page.locator("#results li.candidate").nth(1).focus()
    page.keyboard.press("Enter")
    assert hung_columns(page) == ("海阔凭鱼跃", lowers[1])


def test_the_picture_downloads_as_svg_and_png(page, tmp_path):
    page.fill("#upper", "春风，秋月")
    page.click("#go")
    page.locator("#results li.candidate").nth(4).wait_for()
    lower = card_texts(page)[0]
    with page.expect_download() as svg_download:
        page.click("#download-svg")
    svg_path = svg_download.value.path()
    assert svg_download.value.suggested_filename == "duilian-春风秋月.svg"
    svg = Path(svg_path).read_text(encoding="utf-8")
    root = ET.fromstring(svg)
    assert root.tag == SVG_NS + "svg"
    drawn = {g.get("class"): "".join(t.text for t in g.iter(SVG_NS + "text")) for g in root.iter(SVG_NS + "g")}
    expected = {"upper": "春风秋月", "lower": lower.replace("，", "")}  # punctuation is not drawn
    # Whether the server offers a 横批 depends on the 下联 it wrote; when it does, the pressed one hangs too.
    pressed = page.locator("#hengpi-choices button[aria-pressed='true']")
    if pressed.count():
        expected["hengpi"] = pressed.inner_text()
    assert drawn == expected
    assert "WenQuanYi Zen Hei" in root.get("font-family")
    width, height = int(root.get("width")), int(root.get("height"))

    with page.expect_download() as png_download:
        page.click("#download-png")
    assert png_download.value.suggested_filename == "duilian-春风秋月.png"
    png = Path(png_download.value.path()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    length, chunk, png_w, png_h = struct.unpack(">I4sII", png[8:24])
    assert (length, chunk) == (13, b"IHDR") and (png_w, png_h) == (2 * width, 2 * height)  # drawn at 2x
    assert page.locator("#error").is_hidden()
    (screenshot_dir(tmp_path) / "download-hanging.png").write_bytes(png)
    # The pixels are the picture: red paper, the wall around it, ink in the character cells.
    from PIL import Image  # Pillow comes with matplotlib; only the test decodes the PNG

    image = Image.open(io.BytesIO(png)).convert("RGB")
    paper = root.find(f"{SVG_NS}g[@class='upper']/{SVG_NS}rect")
    px, py = 2 * (int(paper.get("x")) + 3), 2 * (int(paper.get("y")) + 3)
    assert image.getpixel((px, py)) == (0xC8, 0x16, 0x1D)
    assert image.getpixel((4, 4)) == (0xF7, 0xF1, 0xE3)
    first = root.find(f"{SVG_NS}g[@class='upper']/{SVG_NS}text")
    cx, cy = 2 * int(first.get("x")), 2 * int(first.get("y"))
    cell = image.crop((cx - 72, cy - 72, cx + 72, cy + 72))
    dark = sum(cell.convert("L").histogram()[:64])  # ink pixels
    assert 0.03 < dark / (144 * 144) < 0.8, dark  # a character drawn in ink, not an empty or a filled cell


def fake_candidate(text: str, hengpi: list[str]) -> dict:
    checks = {"same_length": True, "punctuation_aligned": True, "repeats_mirrored": True, "no_copy": True,
              "final_tone": "平", "ends_level": True, "rhythm_opposition": 0.5}
    return {"text": text, "score": -2.0, "logprob": -2.0, "rule_score": 0.0, "valid": True, "checks": checks,
            "hengpi": [{"text": h, "score": -1.0 - i / 10} for i, h in enumerate(hengpi)]}


def test_the_hengpi_the_api_offers_hangs_right_to_left(page, tmp_path):
    # Today's server sends no 横批, so this answer is what the API will send once it does.
    sent = []
    answer = {"upper": "合卺花开", "unknown": ["卺"], "candidates": [
        fake_candidate("同心月满", ["百年好合", "天作之合", "永结同心"]),
        fake_candidate("比翼云飞", ["花好月圆", "喜结良缘", "<b>&</b>"]),
    ]}

    def fulfil(route):
        sent.append(route.request.post_data_json)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(answer, ensure_ascii=False))

    page.route("**/v1/couplets", fulfil)
    page.fill("#upper", "合卺花开")
    page.click("#go")
    page.locator("#hengpi-choices button").nth(2).wait_for()
    assert sent[0]["hengpi"] is True and sent[0]["upper"] == "合卺花开"
    # The three offered 横批, the first chosen and drawn above the couplet, its first character at the right.
    choices = page.locator("#hengpi-choices button")
    assert choices.all_inner_texts() == ["百年好合", "天作之合", "永结同心"]
    assert [choices.nth(i).get_attribute("aria-pressed") for i in range(3)] == ["true", "false", "false"]
    assert "".join(page.locator("#picture g.hengpi text").all_text_contents()) == "百年好合"
    xs = text_x(page, "#picture g.hengpi text")
    assert xs == sorted(xs, reverse=True)  # right to left
    banner_bottom = page.eval_on_selector("#picture g.hengpi rect",
                                          "r => Number(r.getAttribute('y')) + Number(r.getAttribute('height'))")
    assert banner_bottom <= min(page.eval_on_selector_all("#picture g.upper rect",
                                                          "rs => rs.map((r) => Number(r.getAttribute('y')))"))
    assert hung_columns(page) == ("合卺花开", "同心月满")
    # The character the model did not know is marked in the 上联, as text.
    unknown = page.locator("#results li.candidate").nth(0).locator(".upper-line .unknown")
    assert unknown.inner_text() == "卺" and "卺" in unknown.get_attribute("title")
    assert "模型不认识：卺" in page.locator("#status").inner_text()
    page.screenshot(path=str(screenshot_dir(tmp_path) / "phone-hanging-hengpi.png"), full_page=True)
    # Another 横批 redraws the banner.
    choices.nth(2).click()
    assert "".join(page.locator("#picture g.hengpi text").all_text_contents()) == "永结同心"
    assert choices.nth(2).get_attribute("aria-pressed") == "true"
    # Another candidate brings its own 横批, the first chosen; markup in one stays text.
    page.locator("#results li.candidate").nth(1).click()
    assert choices.all_inner_texts() == ["花好月圆", "喜结良缘", "<b>&</b>"]
    assert "".join(page.locator("#picture g.hengpi text").all_text_contents()) == "花好月圆"
    choices.nth(2).click()
    assert page.locator("#picture g.hengpi text").all_text_contents() == list("<b>&</b>")
    assert page.locator("#hanging b, #results b").count() == 0


def test_an_older_server_that_refuses_hengpi_is_asked_again_without_it(page):
    sent = []
    answer = {"upper": "春风", "candidates": [fake_candidate("秋月", [])]}
    del answer["candidates"][0]["hengpi"]

    def fulfil(route):
        body = route.request.post_data_json
        sent.append(body)
        if "hengpi" in body:
            route.fulfill(status=422, content_type="application/json",
                          body=json.dumps({"error": "unknown option 'hengpi'"}))
        else:
            route.fulfill(status=200, content_type="application/json", body=json.dumps(answer, ensure_ascii=False))

    page.route("**/v1/couplets", fulfil)
    page.fill("#upper", "春风")
    page.click("#go")
    assert hung_columns(page) == ("春风", "秋月")
    assert page.locator("#picture g.hengpi").count() == 0 and page.locator("#hengpi-choices").is_hidden()
    assert page.locator("#error").is_hidden()
    page.click("#go")  # the page remembers: one request this time
    page.wait_for_function("() => document.querySelectorAll('#picture g.lower text').length === 2")
    assert ["hengpi" in body for body in sent] == [True, False, False]


# (upper, lower, 横批): with and without a 横批, punctuation, 5/7/11 characters, traditional characters,
# a character outside the BMP, and text that would be markup.
PARITY_CASES = [
    ("海阔凭鱼跃", "天高任鸟飞", None),
    ("丹枫江冷人初去", "绿柳堤新燕复来", "春回大地"),
    ("花开花落，春去春来", "月缺月圆，年增年减", "四季平安"),
    ("一帆風順年年好，萬事如意", "四季平安步步高，百業興隆", "萬象更新"),
    ("风声雨声读书声，声声入耳", "家事国事天下事，事事关心", ""),
    ("𠀀字<&>", "\"'字 字", "<b>"),
]


def test_the_page_draws_the_same_svg_as_couplet_svg(page):
    from duilian.hanging import couplet_svg

    drawn = page.evaluate("cases => cases.map(([u, l, h]) => Hanging.coupletSvg(u, l, h))",
                          [list(case) for case in PARITY_CASES])
    for case, js in zip(PARITY_CASES, drawn):
        assert js == couplet_svg(*case), case
