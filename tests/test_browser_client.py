"""The browser page of docs/protocol.md §8.2, as it is written there, in headless Chromium against a real server
on the demo model: what a web canvas app built from the docs shows its user."""

from __future__ import annotations

import dataclasses
import http.server
import re
import threading
from pathlib import Path

import pytest

from backend.server import ServerThread
from test_a1111_tab import CHROMIUM, CHROMIUM_ARGS  # one Chromium set-up for every browser test

DOC = Path(__file__).parent.parent / "docs" / "protocol.md"
TIMEOUT = 120_000  # ms: the job takes seconds on the demo model, but the machine is shared
MASK = (140, 130, 40, 70)  # the page's mask box: x, y, width, height
REACH = 8 + 25 + 1  # mask_grow, the feather's ramp (1.5 × 16 + 1) and a pixel of rounding: how far a change may go
# Every message the page sends, kept per page load, to tell a resumed job from one sent again.
RECORD_SENT = "window.sent = []; const send = WebSocket.prototype.send; " \
    "WebSocket.prototype.send = function (data) { if (typeof data === 'string') window.sent.push(JSON.parse(data)); " \
    "return send.call(this, data); };"
STATUS = "document.getElementById('status').textContent"
PIXELS = "Array.from(document.getElementById('picture').getContext('2d').getImageData(0, 0, 320, 240).data)"


def documented_page() -> str:
    section = DOC.read_text().split("### 8.2 In a browser page", 1)[1]
    return re.search(r"```html\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def page_and_server(demo_config, engine):
    html = documented_page()
    assert 'new WebSocket("ws://127.0.0.1:8760/")' in html and "steps: 20" in html
    html = html.replace("steps: 20", "steps: 30")  # long enough to reload the page while the job runs

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(self.served.encode())

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    origin = f"http://localhost:{site.server_address[1]}"
    config = dataclasses.replace(demo_config, allowed_origins=[origin])
    try:
        with ServerThread(config, engine) as served:
            Page.served = html.replace("ws://127.0.0.1:8760/", served.url)
            yield f"{origin}/page.html"
    finally:
        site.shutdown()
        site.server_close()


def wait(page, condition: str, errors: list) -> None:
    from playwright.sync_api import TimeoutError as PageTimeout
    try:
        page.wait_for_function(condition, polling=50, timeout=TIMEOUT)
    except PageTimeout:
        pytest.fail(f"waited for {condition}: the page says {page.text_content('#status')!r}; errors {errors}")


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's `chromium` (or set EASEL_CHROMIUM)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_the_documented_page_paints_its_result_resumes_after_a_reload_and_keeps_its_session(page_and_server,
                                                                                            browser):
    # A page built from the docs as they were read its frames as Blobs (the `result` was handled before its
    # frames), painted the layer with putImageData (the picture was erased outside the mask), and kept its session
    # in sessionStorage, which a window.open() copy inherits and took over, closing the first tab.
    context = browser.new_context()
    context.add_init_script(RECORD_SENT)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(page_and_server)
    before = page.evaluate(PIXELS)
    wait(page, f"/^step ([2-9]|1[0-9])\\//.test({STATUS})", errors)

    page.reload()
    wait(page, f"{STATUS} === 'done' || {STATUS}.startsWith('closed') || {STATUS}.includes(':')", errors)
    assert page.text_content("#status") == "done", errors
    sent = page.evaluate("window.sent")
    assert sent[0]["resume"] and sent[0]["pending"] == ["door"] and len(sent) == 1, \
        "the reloaded page resumed its job instead of sending it again"
    after = page.evaluate(PIXELS)
    x0, y0, w, h = MASK
    changed = {(i // 4 % 320, i // 4 // 320) for i in range(0, len(after), 4) if after[i:i + 4] != before[i:i + 4]}
    assert (x0 + w // 2, y0 + h // 2) in changed, "the result was painted over the picture"
    assert all(x0 - REACH <= x < x0 + w + REACH and y0 - REACH <= y < y0 + h + REACH for x, y in changed), \
        "pixels away from the mask are the picture's own"

    with context.expect_page() as opened:  # its sessionStorage is a copy of the reloaded page's
        page.evaluate("window.open(location.href)")
    copy = opened.value
    copy.on("pageerror", lambda error: errors.append(str(error)))
    wait(copy, f"{STATUS} === 'done' || {STATUS}.startsWith('closed') || {STATUS}.includes(':')", errors)
    assert copy.text_content("#status") == "done" and "resume" not in copy.evaluate("window.sent")[0], \
        "the copy ran a job of its own in a session of its own"
    assert page.text_content("#status") == "done", "the first tab kept its session"
    assert not errors
