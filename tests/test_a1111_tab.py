"""The Easel tab in a real browser, inside the real AUTOMATIC1111 WebUI 1.8.0 code (gradio 3.41.2):
the packaged extension in the WebUI's ``extensions/``, mounted by its script loader with its settings,
infotext / "Send to" code, saved defaults and page JavaScript (``tests/webui_real.py``, in the WebUI's
environment ``.venv-webui``), driven in headless Chromium against a real server on the demo models."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import os
import time
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest
from PIL import Image

from backend.engine.engine import Engine
from backend.engine.models import ModelRegistry, pick_device
from backend.server import ServerThread
from conftest import picture
from netfaults import Blinker
from webui_env import A1111, SETUP, free_port, serving, webui_folder, webui_source

CHROMIUM = Path(os.environ.get("EASEL_CHROMIUM", "/usr/bin/chromium"))
# The machine's closed network refuses connections that Chromium would otherwise try.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STATUS = "document.querySelector('#easel_status [data-testid=markdown]')"  # the status line, in page JS
TIMEOUT = 60_000  # ms: a job on the demo model takes seconds, but the machine is shared
# Saved UI defaults (Settings > Defaults writes them): one ControlNet unit's field, not the others'; and
# the CFG scale's 7 that a WebUI saved at its first start before 0 (auto) was the tab's default.
UI_DEFAULTS = {"easel/Unit 2 scale/value": 0.35, "easel/CFG scale/value": 7.0}


@pytest.fixture(scope="module")
def webui(server, tmp_path_factory):
    webui_source(A1111)
    # a file name pattern with the job's parameters (the WebUI reads them off the job it saves for)
    root = webui_folder(tmp_path_factory.mktemp("webui") / "data", ui_defaults=UI_DEFAULTS, settings={
        "easel_url": server.url, "samples_filename_pattern": "[seed]-[steps]-[sampler]-[cfg]"})
    with serving(A1111, root) as (url, log):
        yield {"url": url, "server": server.url, "root": root, "log": log}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: {SETUP[A1111]}")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# Uncaught page errors with the tab they happened on: the WebUI's own scripts throw on this smaller
# page of theirs (elements of their full txt2img / img2img tabs are missing); ours must not.
RECORD_ERRORS = """window.easelErrors = [];
window.addEventListener('error', (event) => {
    const tab = typeof get_uiCurrentTab === 'function' ? get_uiCurrentTab() : null;
    window.easelErrors.push([tab ? tab.innerText.trim() : '', String(event.message)]);
});"""


def easel_errors(page) -> list:
    return [error for error in page.evaluate("window.easelErrors")
            if error[0] == "Easel" or "easel" in error[1].lower()]


@pytest.fixture
def page(browser, webui):
    """A fresh page on the Easel tab; page errors there (or naming it) fail the test."""
    with easel_page(browser, webui["url"]) as opened:
        yield opened


@contextlib.contextmanager
def easel_page(browser, url: str):
    """A fresh page of the WebUI at ``url`` on the Easel tab; page errors there (or naming it) fail the test."""
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.set_default_timeout(TIMEOUT)
    page.add_init_script(RECORD_ERRORS)
    page.goto(url)
    open_tab(page, "Easel")
    page.locator("#easel_generate").wait_for()
    yield page
    errors = easel_errors(page)
    page.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    paths = {"picture": folder / "house.png", "reference": folder / "style.png"}
    picture(192, 128, seed=11).save(paths["picture"])
    picture(96, 96, seed=12).save(paths["reference"])
    return paths


# -- driving the page ------------------------------------------------------------------------------

def open_tab(page, name: str) -> None:
    page.locator("#tabs > .tab-nav button", has_text=name).click()


def text_of(page, elem_id: str) -> str:
    """A Markdown component's text (without gradio's "processing" overlay around it)."""
    return page.locator(f"#{elem_id} [data-testid=markdown]").inner_text()


def set_number(page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(str(value))
    field.blur()


def choose(page, elem_id: str, label: str) -> None:
    page.locator(f"#{elem_id} label", has_text=label).click()


def upload(page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    page.locator(f"#{elem_id} img").first.wait_for()
    if elem_id == "easel_picture":
        # gradio 3's sketch editor sends its mask only once its canvases are drawn; a Generate before
        # that fails inside gradio (a None mask) and the tab never hears of it.
        page.wait_for_function("""() => [...document.querySelectorAll('#easel_picture canvas')]
            .some(canvas => canvas.width > 0 && canvas.height > 0)""", timeout=TIMEOUT)


def paint(page, start: tuple[float, float], end: tuple[float, float], size: tuple[int, int]) -> tuple:
    """Drag the brush across the picture between two points given in picture pixels."""
    canvas = page.locator("#easel_picture canvas").last
    box = canvas.bounding_box()
    at = lambda x, y: (box["x"] + x * box["width"] / size[0], box["y"] + y * box["height"] / size[1])  # noqa: E731
    page.mouse.move(*at(*start))
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(*at(start[0] + (end[0] - start[0]) * i / 10, start[1] + (end[1] - start[1]) * i / 10))
    page.mouse.up()


def watch_progress(page) -> None:
    """Record every text the progress line shows (it changes faster than polling can see). The whole
    block is watched: gradio may re-create the line's element (a late load event under CI load), and an
    observer of the old element would then see nothing more."""
    page.evaluate("""() => {
        window.easelSeen = [];
        const block = document.querySelector('#easel_progress');
        const text = () => (block.querySelector('[data-testid=markdown]') || block).innerText;
        let last = text();
        new MutationObserver(() => {
            const now = text();
            if (now !== last) window.easelSeen.push(last = now);
        }).observe(block, {subtree: true, childList: true, characterData: true});
    }""")


def generate(page) -> str:
    """Press Generate and return the text the progress line ends on."""
    watch_progress(page)
    page.click("#easel_generate")
    return final_text(page)


def final_text(page) -> str:
    """The text the progress line ends on since ``watch_progress``: every run shows at least one new
    text; the last one is not "Connecting…", "Waiting…", "Running…" or "Step …"."""
    final = page.wait_for_function("""() => window.easelSeen.map(text => text.trim())
        .find(text => text && !/^(Connecting|Waiting|Running|Step )/.test(text))""", timeout=TIMEOUT * 3)
    return final.json_value()


def image_of(page, elem_id: str) -> Image.Image:
    """The picture an output image component shows (gradio 3 sends them as data URLs)."""
    source = page.locator(f"#{elem_id} img").first.get_attribute("src")
    assert source.startswith("data:image/png;base64,"), source[:60]
    return Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).convert("RGBA")


# -- tests ----------------------------------------------------------------------------------------

def test_status_line_names_the_backend(page, webui):
    status = text_of(page, "easel_status")
    assert status.startswith(f"Easel backend at {webui['server']}: easel/") and "on cpu" in status, status
    assert "default model demo" in status


def test_paint_a_mask_generate_and_keep_every_unpainted_pixel(page, files):
    upload(page, "easel_picture", files["picture"])
    paint(page, (30, 40), (60, 50), (192, 128))
    page.locator("#easel_prompt textarea").fill("a red door")
    set_number(page, "easel_steps", 4)
    set_number(page, "easel_seed", 5)
    assert generate(page).startswith("Done: 1 image"), text_of(page, "easel_progress")
    seen = page.evaluate("window.easelSeen")
    assert any(text.startswith("Step 1/4") for text in seen) and any("Step 4/4" in text for text in seen), seen
    assert page.locator("#easel_preview img").count() == 1  # the live preview showed a step
    assert page.locator("#easel_gallery img").count() >= 1

    before = np.asarray(Image.open(files["picture"]).convert("RGBA"))
    after = np.asarray(image_of(page, "easel_selected"))
    assert after.shape == before.shape
    changed = np.argwhere(np.any(after != before, axis=-1))
    assert len(changed) > 100, "the painted area did not change"
    # Only around the stroke: its bounds, the brush, grow 8 + feather 16 (margin 33).
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    assert left >= 30 - 60 and right <= 60 + 60 and top >= 40 - 60 and bottom <= 50 + 60, (top, left, bottom, right)
    assert (after[:, 125:] == before[:, 125:]).all() and (after[115:] == before[115:]).all()
    info = page.locator("#easel_info textarea").input_value()
    assert info.startswith("a red door\nSteps: 4, Sampler: DPM++ 2M Karras, CFG scale: 7.0, Seed: 5, Size: 192x128")
    if os.environ.get("EASEL_SCREENSHOT"):  # how docs/images/a1111-tab.png is made
        page.screenshot(path=os.environ["EASEL_SCREENSHOT"], full_page=False)

    # The result and the mask painted for it, to the WebUI's "Inpaint upload" (img2img's fifth mode).
    page.click("#easel_send_to_inpaint_upload")
    page.locator("#img_inpaint_mask img").first.wait_for()
    assert page.locator("#img2img_inpaint_upload_tab").is_visible()
    sent = image_of(page, "img_inpaint_base")
    assert np.array_equal(np.asarray(sent), after)
    mask = np.asarray(image_of(page, "img_inpaint_mask").convert("L"))
    assert mask.shape == (128, 192) and mask[45, 45] == 255 and mask[5, 5] == 0 and mask[:, 125:].max() == 0


def test_control_unit_with_preprocess_preview_and_a_reference(page, files):
    upload(page, "easel_picture", files["picture"])
    page.locator("#easel_prompt textarea").fill("a cottage")
    choose(page, "easel_mode", "img2img")
    set_number(page, "easel_strength", 0.5)
    set_number(page, "easel_steps", 4)

    page.locator("#easel_cn1").get_by_text("ControlNet unit 1").click()
    page.locator("#easel_cn1_enabled input").check()
    page.locator("#easel_cn1_pre input").check()
    page.click("#easel_cn1_show")
    page.locator("#easel_cn1_map img").wait_for()
    assert text_of(page, "easel_cn1_message").strip() == "canny map made by the backend."
    edges = np.asarray(image_of(page, "easel_cn1_map").convert("L"))
    assert edges.shape == (128, 192) and 0 < (edges > 200).mean() < 0.5  # sparse edges, not the picture

    page.locator("#easel_ref1").get_by_text("Reference 1", exact=True).click()
    upload(page, "easel_ref1_image", files["reference"])
    set_number(page, "easel_ref1_weight", 0.8)
    choose(page, "easel_ref1_mode", "style")

    assert generate(page).startswith("Done: 1 image"), text_of(page, "easel_progress")
    info = page.locator("#easel_info textarea").input_value()
    assert "Denoising strength: 0.5" in info and "Easel mode: img2img" in info, info
    assert 'Easel control 1: "canny, preprocess canny, scale 1, 0-1"' in info, info
    assert 'Easel reference 1: "style, weight 0.8"' in info, info
    assert image_of(page, "easel_selected").size == (192, 128)


def test_ctrl_enter_starts_a_job_and_esc_cancels_it(page):
    # The WebUI's own shortcuts (its script.js): they act on the current tab's *_generate and
    # *_interrupt buttons; Cancel shows only while a job runs, as the WebUI's Interrupt does.
    page.locator("#easel_prompt textarea").fill("a lighthouse")
    choose(page, "easel_mode", "generate")
    set_number(page, "easel_steps", 150)
    assert not page.locator("#easel_interrupt").is_visible()
    watch_progress(page)
    page.keyboard.press("Control+Enter")
    page.wait_for_function("() => window.easelSeen.some(text => text.startsWith('Step '))",  # (a busy page skips some)
                           timeout=TIMEOUT * 2)
    assert page.locator("#easel_interrupt").is_visible()
    started = time.monotonic()
    page.keyboard.press("Alt+Enter")  # skip: nothing to skip in Easel, and no page error either
    page.keyboard.press("Escape")
    page.wait_for_function("() => window.easelSeen.some(text => text.trim() === 'Cancelled.')")
    assert time.monotonic() - started < 30
    steps = [text for text in page.evaluate("window.easelSeen") if text.startswith("Step ")]
    assert steps and "150/150" not in steps[-1], steps
    assert page.locator("#easel_gallery img").count() == 0
    page.locator("#easel_interrupt").wait_for(state="hidden")


def weights_with_ctrl_arrows(page) -> None:
    """The WebUI's Ctrl+Up / Ctrl+Down (its edit-attention.js) weight the selected words in both prompt fields."""
    # (its step is a setting the page reads once the first render has settled: a keypress before that makes NaN)
    page.wait_for_function("() => Object.keys(opts).length > 0")
    for field in ("easel_prompt", "easel_negative"):
        box = page.locator(f"#{field} textarea")
        box.fill("a red door")
        box.evaluate("box => box.setSelectionRange(2, 5)")  # "red"
        page.keyboard.press("Control+ArrowUp")
        assert box.input_value() == "a (red:1.1) door", (field, box.input_value())
        page.keyboard.press("Control+ArrowDown")
        page.keyboard.press("Control+ArrowDown")
        assert box.input_value() == "a (red:0.9) door", (field, box.input_value())
        box.fill("")


def test_ctrl_arrows_weight_words_as_in_the_webuis_prompts(page):
    weights_with_ctrl_arrows(page)


def test_esc_cancels_a_job_whose_connection_is_being_made_again(page, webui):
    # A link that blinks mid-job: the tab reconnects and cancels once it is back, but its Cancel was hidden
    # while it said "reconnecting…", so the WebUI's Esc did nothing (and Ctrl+Enter started a second job).
    blinker = Blinker(webui["server"])
    point_at(page, blinker.url)
    try:
        page.locator("#easel_prompt textarea").fill("a lighthouse")
        choose(page, "easel_mode", "generate")
        set_number(page, "easel_steps", 150)
        watch_progress(page)
        page.keyboard.press("Control+Enter")
        page.wait_for_function("() => window.easelSeen.some(text => text.startsWith('Step '))",
                               timeout=TIMEOUT * 2)
        blinker.cut(4)
        page.wait_for_function("() => window.easelSeen.some(text => text.includes('reconnecting'))")
        assert page.locator("#easel_interrupt").is_visible()
        page.keyboard.press("Escape")
        page.wait_for_function("() => window.easelSeen.some(text => text.trim() === 'Cancelled.')")
        assert not any("150/150" in text for text in page.evaluate("window.easelSeen"))
        page.locator("#easel_interrupt").wait_for(state="hidden")
    finally:
        point_at(page, webui["server"])
        blinker.close()


def test_bad_input_gets_a_sentence_and_the_next_job_runs(page, files):
    page.locator("#easel_prompt textarea").fill("a red door")
    assert generate(page) == "Inpaint needs a picture: upload one first."
    upload(page, "easel_picture", files["picture"])
    # Right after an upload, gradio 3's sketch editor may not have a mask to send yet: gradio then fails
    # the click itself (a None mask) and the tab never hears of it. The answer differs from the last one
    # shown, so pressing again until it comes is safe.
    for _ in range(6):
        watch_progress(page)
        page.click("#easel_generate")
        try:
            page.wait_for_function("() => window.easelSeen.some(text => text.trim())", timeout=10_000)
            break
        except Exception as exc:  # playwright's TimeoutError: nothing came back
            if "Timeout" not in type(exc).__name__:
                raise
    assert final_text(page) == "Paint over the part of the picture to change first (inpaint needs a mask)."
    choose(page, "easel_mode", "generate")
    set_number(page, "easel_steps", 2)
    set_number(page, "easel_width", 64)
    set_number(page, "easel_height", 64)
    assert generate(page).startswith("Done: 1 image")
    # a sentence that shows a <lora:> tag shows it whole (Markdown took it for a link and hid its brackets)
    page.locator("#easel_prompt textarea").fill("a red door <lora:demo-lora:0.8:0.5>")
    assert generate(page).endswith("write one weight for both, <lora:demo-lora:WEIGHT> (Prompt).")


def test_upscale_makes_the_picture_larger(page, files):
    upload(page, "easel_picture", files["picture"])
    choose(page, "easel_mode", "upscale")
    assert generate(page).startswith("Done: 1 image"), text_of(page, "easel_progress")
    larger = image_of(page, "easel_selected")
    assert larger.size == (384, 256), "Upscale by 2 with the server's first upscaler"
    back = np.asarray(larger.convert("RGB").resize((192, 128), Image.Resampling.BOX), np.int16)
    assert np.abs(back - np.asarray(Image.open(files["picture"]).convert("RGB"), np.int16)).mean() < 8
    assert "Easel mode: upscale" in page.locator("#easel_info textarea").input_value()


def test_a_16_bit_grey_picture_reaches_the_job_in_its_greys(page, tmp_path):
    # gradio converted the upload to RGBA with Pillow, which clips 16 bits: a depth map or a scan, shown in its
    # greys in the editor, reached the job (and the result) all but white.
    deep = Image.fromarray((np.mgrid[0:64, 0:96][1] * 689).astype(np.uint16))  # 0 .. 65455 left to right
    deep.save(tmp_path / "deep.png")
    upload(page, "easel_picture", tmp_path / "deep.png")
    choose(page, "easel_mode", "upscale")
    page.locator("#easel_upscaler input").click()
    page.locator("#easel_upscaler li", has_text="lanczos").first.click()
    assert generate(page).startswith("Done: 1 image"), text_of(page, "easel_progress")
    larger = image_of(page, "easel_selected").convert("L").resize((96, 64), Image.Resampling.BOX)
    greys = (np.asarray(deep, np.int64) + 128) // 257
    assert np.abs(np.asarray(larger, np.int64) - greys).mean() < 4


def box(page, selector: str) -> dict:
    return page.locator(selector).first.bounding_box()


LABEL_HEIGHT = """(id) => document.querySelector(`#${id} [data-testid=block-info]`).getBoundingClientRect().height"""


# how many lines a button's text takes (a range's rectangles: one for each line it is laid out on)
BUTTON_LINES = """(id) => {
    const range = document.createRange();
    range.selectNodeContents(document.getElementById(id));
    return new Set([...range.getClientRects()].map(rect => Math.round(rect.top))).size;
}"""


def check_window_widths(page, tool: str) -> None:
    """The tab keeps the WebUI's look: its model refresh button is the WebUI's small square tool button (as
    ``tool``); the four Expand sliders sit two by two in a wide window (in four columns the fourth wrapped
    alone); at 800 px wide (a laptop's half screen), a ControlNet unit and a reference opened, paired fields
    go one under the other, so that no label wraps into lines of its own (Image guidance's too), and nothing
    scrolls sideways; "Check backend" is a one-line button no taller than the model's refresh button."""
    page.set_viewport_size({"width": 1400, "height": 900})
    refresh, reference = box(page, "#easel_model_refresh"), box(page, tool)
    assert abs(refresh["width"] - reference["width"]) <= 2 and abs(refresh["height"] - reference["height"]) <= 2, \
        (refresh, reference)
    page.locator("#easel_expand").get_by_text("Expand (outpaint)").click()
    page.locator("#easel_expand_bottom").wait_for()
    sides = {name: box(page, f"#easel_expand_{name}") for name in ("left", "right", "top", "bottom")}
    assert sides["left"]["y"] == sides["right"]["y"] < sides["top"]["y"] == sides["bottom"]["y"], sides
    assert max(side["width"] for side in sides.values()) - min(side["width"] for side in sides.values()) <= 2, sides
    page.locator("#easel_cn1").get_by_text("ControlNet unit 1").click()
    page.locator("#easel_ref1").get_by_text("Reference 1", exact=True).click()
    page.locator("#easel_ref1_weight").wait_for()
    page.set_viewport_size({"width": 800, "height": 900})
    page.wait_for_function("() => window.innerWidth === 800")
    one_line = page.evaluate(LABEL_HEIGHT, "easel_grow")
    for elem_id in ("easel_padding", "easel_upscale_by", "easel_feather", "easel_cfg", "easel_width",
                    "easel_cn1_scale", "easel_cn1_start", "easel_ref1_weight"):
        height = page.evaluate(LABEL_HEIGHT, elem_id)
        assert height <= one_line + 2, f"{elem_id}'s label wraps at 800 px: {height} px tall, one line is {one_line}"
    pick_model(page, "demo-instruct (")  # (its Image guidance slider shows only with an instruct model)
    page.locator("#easel_image_guidance").wait_for()
    height = page.evaluate(LABEL_HEIGHT, "easel_image_guidance")
    assert height <= one_line + 2, f"Image guidance's label wraps at 800 px: {height} px tall, one line is {one_line}"
    for width in (800, 1400):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_function(f"() => window.innerWidth === {width}")
        lines, button = page.evaluate(BUTTON_LINES, "easel_refresh"), box(page, "#easel_refresh")
        assert lines == 1 and button["height"] <= box(page, "#easel_model_refresh")["height"] + 2, \
            f"Check backend at {width} px: {lines} lines of text, {button['height']} px tall"
    page.set_viewport_size({"width": 800, "height": 900})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 800  # no sideways scrolling


def test_the_tab_keeps_the_webuis_look_in_a_wide_and_a_narrow_window(page):
    # the WebUI's own refresh button beside its checkpoint list
    check_window_widths(page, "#refresh_sd_model_checkpoint")


def point_at(page, url: str) -> None:
    """Set the tab's backend address on the WebUI's Settings page (its Easel section) and apply it."""
    open_tab(page, "Settings")
    page.locator("#settings > .tab-nav button", has_text="Easel").click()
    page.locator("#setting_easel_url textarea").fill(url)
    page.click("#settings_submit")
    page.wait_for_function("() => document.querySelector('#settings_result').innerText.includes('easel_url')")
    open_tab(page, "Easel")


@contextlib.contextmanager
def backend_down(page, server_url: str):
    """The tab pointed at a port nobody listens on (yielded), once it says so; back at the server after, with
    its models offered again (the tab's model list is the WebUI's, for the pages of the tests after)."""
    down = f"ws://127.0.0.1:{free_port()}/"
    point_at(page, down)
    try:
        page.click("#easel_refresh")
        page.wait_for_function(f"() => {STATUS}.innerText.includes('Cannot reach')")
        yield down
    finally:
        point_at(page, server_url)
        page.click("#easel_refresh")
        page.wait_for_function(f"() => {STATUS}.innerText.includes('on cpu')")


def test_a_saved_model_default_is_picked_once_a_backend_started_after_the_webui_answers(browser, server,
                                                                                        tmp_path):
    # The WebUI started before the backend: the tab offered "Server default" alone and dropped the Model saved
    # in Settings > Defaults without a word (nor would its label, an earlier offer's, have matched later on).
    webui_source(A1111)
    root = webui_folder(tmp_path / "webui", settings={"easel_url": f"ws://127.0.0.1:{free_port()}/"},
                        ui_defaults={"easel/Model/value": "demo-base (SD 1.5, 512 px: 12 ControlNet types)"})
    with serving(A1111, root) as (url, _), easel_page(browser, url) as page, easel_page(browser, url) as chosen:
        assert "Cannot reach" in text_of(page, "easel_status")
        assert page.locator("#easel_model input").input_value() == "Server default"
        # A painter who picks "Server default" keeps it: a refresh (or a job's end) switched it to the saved model.
        pick_model(chosen, "Server default")
        point_at(page, server.url)
        page.click("#easel_refresh")
        page.wait_for_function("() => document.querySelector('#easel_model input').value === "
                               "'demo-base (SD 1.5, 512 px: 13 ControlNet types, references + face)'")
        chosen.click("#easel_model_refresh")
        shown = chosen.wait_for_function("() => document.querySelector('#easel_model input').value !== "
                                         "'Server default' && document.querySelector('#easel_model input').value")
        assert shown.json_value() == "Server default (demo)"


def test_backend_down_reads_as_a_sentence(page, webui):
    with backend_down(page, webui["server"]) as down:
        # (Markdown shows `easel serve` as code, without the backticks)
        expected = (f"Cannot reach the Easel backend at {down} (nothing is listening at that address and port): "
                    "start it with easel serve, "
                    "or set its address in Settings > Easel.")
        assert text_of(page, "easel_status").strip() == expected
        page.locator("#easel_prompt textarea").fill("a lighthouse")
        choose(page, "easel_mode", "generate")
        assert generate(page) == expected
    page.click("#easel_refresh")
    page.wait_for_function(f"() => {STATUS}.innerText.includes('on cpu')")


def test_a_job_that_reaches_the_backend_brings_the_status_line_and_models_back(page, webui):
    # A backend started after the WebUI, or restarted: a job ran there, and the status line went on saying
    # "Cannot reach…" (the model list offering only "Server default") until Check backend was clicked.
    with backend_down(page, webui["server"]):
        point_at(page, webui["server"])  # the backend is back; nobody clicks Check backend
        assert "Cannot reach" in text_of(page, "easel_status")
        page.locator("#easel_prompt textarea").fill("a lighthouse")
        choose(page, "easel_mode", "generate")
        set_number(page, "easel_steps", 2)
        assert generate(page).startswith("Done")
        page.wait_for_function(f"() => {STATUS}.innerText.includes('on cpu')")
        page.locator("#easel_model input").click()
        assert page.locator("#easel_model li", has_text="demo-base").count() == 1


# how a Markdown line's text is drawn: its colour, and the frame around it (an error's div is its own block)
LOOK = """(id) => {
    const line = document.querySelector(`#${id} [data-testid=markdown] p`);
    const block = getComputedStyle(line.parentElement);
    return [getComputedStyle(line).color, block.borderTopStyle === 'none' ? null : block.borderTopColor];
}"""


def rgb(css: str | None) -> tuple[int, ...] | None:
    return css and tuple(int(part) for part in css[css.index("(") + 1:css.index(")")].split(",")[:3])


def red(colour: tuple[int, ...] | None) -> bool:
    return colour is not None and colour[0] > max(colour[1:]) + 60


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_an_error_is_shown_in_the_themes_error_colours_and_a_status_line_plainly(page, webui, theme):
    # (the WebUI's ?__theme= switches gradio to its light or dark colours)
    page.goto(f"{webui['url']}?__theme={theme}")
    open_tab(page, "Easel")
    page.wait_for_function(f"() => {STATUS}.innerText.includes('on cpu')")
    plain = [rgb(colour) for colour in page.evaluate(LOOK, "easel_status")]
    with backend_down(page, webui["server"]):
        failed = [rgb(colour) for colour in page.evaluate(LOOK, "easel_status")]
        page.locator("#easel_prompt textarea").fill("a lighthouse")
        choose(page, "easel_mode", "generate")
        assert generate(page).startswith("Cannot reach")
        assert [rgb(colour) for colour in page.evaluate(LOOK, "easel_progress")] == failed
    # red text or a red frame (the WebUI's dark theme draws errors in light text inside a red frame)
    assert not any(map(red, plain)) and any(map(red, failed)), (theme, plain, failed)
    assert [rgb(colour) for colour in page.evaluate(LOOK, "easel_status")] == plain


def test_check_backend_offers_what_the_backend_now_has(page, webui, demo_config):
    # Another backend set in Settings (or one started after the WebUI, or a LoRA added to its folder): the
    # fields followed the backend the tab was built against until the WebUI restarted.
    config = dataclasses.replace(demo_config, loras={**demo_config.loras, "ink-style": demo_config.loras["demo-lora"]})
    with ServerThread(config, Engine(ModelRegistry(config, *pick_device("cpu")))) as other:
        point_at(page, other.url)
        try:
            page.click("#easel_refresh")
            page.wait_for_function(f"() => {STATUS}.innerText.includes('{other.url}')")
            page.locator("#easel_lora input").click()
            page.locator("#easel_lora li", has_text="ink-style").click()
            page.wait_for_function("() => document.querySelector('#easel_prompt textarea').value"
                                   ".includes('<lora:ink-style:1>')")
        finally:
            point_at(page, webui["server"])
            page.click("#easel_refresh")  # the tab's offer is the module server's again, for the tests after
            page.wait_for_function(f"() => {STATUS}.innerText.includes('{webui['server']}')")


def test_pick_a_result_and_send_it_to_img2img_and_inpaint(page):
    page.click("#easel_reuse_seed")  # (no result yet)
    page.wait_for_function("() => document.querySelector('#easel_progress').innerText.includes('generate one first')")
    page.locator("#easel_prompt textarea").fill("a lighthouse at dusk")
    choose(page, "easel_mode", "generate")
    for field, value in (("easel_steps", 2), ("easel_seed", 99), ("easel_batch", 2), ("easel_width", 64),
                         ("easel_height", 64)):
        set_number(page, field, value)
    assert generate(page).startswith("Done: 2 images in ")
    assert "Seed: 99," in page.locator("#easel_info textarea").input_value()
    page.locator("#easel_gallery button.thumbnail-item").nth(1).click()  # the second of the batch
    page.wait_for_function("() => document.querySelector('#easel_info textarea').value.includes('Seed: 100,')")
    result = image_of(page, "easel_selected")
    # ♻️ takes the shown result's seed, 🎲 makes it random again (as beside the WebUI's own seed)
    page.click("#easel_reuse_seed")
    page.wait_for_function("() => document.querySelector('#easel_seed input').value === '100'")
    page.click("#easel_random_seed")
    page.wait_for_function("() => document.querySelector('#easel_seed input').value === '-1'")
    for tab, picture_id in (("img2img", "img2img_image"), ("inpaint", "img2maskimg")):
        open_tab(page, "Easel")
        page.click(f"#tab_easel #{tab}_tab")
        open_tab(page, "img2img")  # the WebUI's img2img tab holds both (and its fields)
        page.locator(f"#{picture_id} img").first.wait_for()
        page.wait_for_function("() => document.querySelector('#img2img_seed input').value === '100'")
        assert page.locator("#img2img_prompt textarea").input_value() == "a lighthouse at dusk"
        assert page.locator("#img2img_steps input[type=number]").input_value() == "2"
        assert page.locator("#img2img_width input[type=number]").input_value() == "64"  # the WebUI's send_size
        sent = page.locator(f"#{picture_id} img").first.get_attribute("src")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(sent.split(",", 1)[1])))
                                         .convert("RGBA")), np.asarray(result))
        open_tab(page, "Easel")
        page.locator("#easel_gallery button.thumbnail-item").nth(1).click()



def test_saved_defaults_reach_each_unit_and_every_send_to_button_is_there(page):
    # ui-config.json set unit 2's scale only (each unit's fields have keys of their own)
    assert page.locator("#easel_cn2_scale input[type=number]").input_value() == "0.35"
    assert page.locator("#easel_cn1_scale input[type=number]").input_value() == "1"
    assert page.locator("#easel_cn3_scale input[type=number]").input_value() == "1"
    for button in ("txt2img_send_to_easel", "img2img_send_to_easel", "easel_tab"):  # easel_tab: PNG Info's
        assert page.locator(f"#{button}").count() == 1, button


def pick_model(page, name: str) -> None:
    page.locator("#easel_model input").click()
    page.locator("#easel_model li", has_text=name).first.click()


def test_a_second_model_its_saved_result_in_png_info_and_send_to_easel(page, webui):
    # The model picker lists the server's models with what they are; the job names the one picked.
    page.locator("#easel_model input").click()
    listed = page.locator("#easel_model li").all_inner_texts()
    assert [text.replace("\u2713", "").strip() for text in listed] == [  # (the chosen one has a tick)
        "Server default (demo)",
        "demo (SD 1.5, 512 px: inpaint UNet, instruct, 13 ControlNet types, references + face), default",
        "demo-instruct (SD 1.5, 512 px: instruct only)",
        "demo-base (SD 1.5, 512 px: 13 ControlNet types, references + face)",
        "demo-xl (SDXL, 512 px: inpaint UNet, 13 ControlNet types, references + face)",
        "demo-flux (Flux, 512 px: Fill inpaint, instruct, no negative prompt)",
        "demo-flux-file (Flux, 512 px: no inpaint, no negative prompt)",
        "demo-flux-gguf (Flux, 512 px: Fill inpaint, instruct, no negative prompt)",
        "demo-vpred (SD 1.5, 512 px: 13 ControlNet types, references + face)"], listed
    page.locator("#easel_model li", has_text="demo-base (").click()
    page.locator("#easel_prompt textarea").fill("a lighthouse")
    choose(page, "easel_mode", "generate")
    for field, value in (("easel_steps", 2), ("easel_seed", 7), ("easel_width", 64), ("easel_height", 64)):
        set_number(page, field, value)
    page.locator("#easel_sampler input").click()
    page.locator("#easel_sampler li", has_text="Euler a").click()
    assert generate(page).startswith("Done: 1 image"), text_of(page, "easel_progress")
    info = page.locator("#easel_info textarea").input_value()
    assert "Sampler: Euler a," in info and "Model: demo-base," in info, info

    # Saved as the WebUI saves txt2img's pictures, with the infotext in the PNG.
    saved = [path for path in webui["root"].rglob("*.png") if Image.open(path).info.get("parameters") == info]
    assert len(saved) == 1 and "txt2img-images" in saved[0].parts, saved
    assert saved[0].name.endswith("-7-2-Euler a-7.0.png"), saved[0].name  # [seed]-[steps]-[sampler]-[cfg]

    # PNG Info reads it back; its "Send to easel" fills the tab (model included) with the picture.
    pick_model(page, "Server default")
    page.locator("#easel_prompt textarea").fill("")
    choose(page, "easel_mode", "inpaint")
    open_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved[0]))
    page.wait_for_function("(info) => document.querySelector('#pnginfo_generation_info textarea').value === info",
                           arg=info)
    page.click("#easel_tab")
    page.locator("#easel_prompt textarea").wait_for(state="visible")  # switched to the Easel tab
    page.wait_for_function("() => document.querySelector('#easel_prompt textarea').value === 'a lighthouse'")
    assert page.locator("#easel_seed input").input_value() == "7"
    assert page.locator("#easel_sampler input").input_value() == "Euler a"
    assert "demo-base" in page.locator("#easel_model input").input_value()
    page.wait_for_function("() => document.querySelector('#easel_mode input:checked').value === 'generate'")
    page.locator("#easel_picture img").first.wait_for()


def test_instruct_inside_a_painted_mask_and_a_model_offers_only_what_it_takes(page, webui, files):
    # An InstructPix2Pix model: the Mode radio offers its instruct edit (and the model-free upscale).
    page.locator("#easel_cn1").get_by_text("ControlNet unit 1").click()
    page.locator("#easel_cn1_enabled input").check()  # hidden with a model that takes none, and left out
    pick_model(page, "demo-instruct (")
    page.wait_for_function("() => document.querySelectorAll('#easel_mode input').length === 2")
    assert page.locator("#easel_mode input:checked").get_attribute("value") == "instruct"
    assert not page.locator("#easel_cn1").is_visible() and not page.locator("#easel_ref1").is_visible()
    upload(page, "easel_picture", files["picture"])
    paint(page, (30, 40), (60, 50), (192, 128))
    page.locator("#easel_prompt textarea").fill("make it winter")
    for field, value in (("easel_steps", 3), ("easel_seed", 5), ("easel_image_guidance", 2)):
        set_number(page, field, value)
    assert generate(page).startswith("Done: 1 image"), text_of(page, "easel_progress")
    before = np.asarray(Image.open(files["picture"]).convert("RGBA"))
    after = np.asarray(image_of(page, "easel_selected"))
    changed = np.argwhere(np.any(after != before, axis=-1))
    assert len(changed) > 100, "the painted area did not change"
    (top, left), (bottom, right) = changed.min(0), changed.max(0)  # stroke, brush, grow 8 + feather 16
    assert left >= 30 - 60 and right <= 60 + 60 and top >= 40 - 60 and bottom <= 50 + 60, (top, left, bottom, right)
    info = page.locator("#easel_info textarea").input_value()
    assert info.startswith("make it winter\nSteps: 3,") and "Image CFG scale: 2.0" in info, info
    assert "Model: demo-instruct" in info and "Easel mode: instruct" in info, info
    saved = [path for path in webui["root"].rglob("*.png") if Image.open(path).info.get("parameters") == info]
    assert len(saved) == 1, saved  # kept as the WebUI keeps img2img's pictures, infotext and all

    # Flux takes no negative prompt, ControlNets, references or image guidance here: none is offered.
    page.locator("#easel_negative textarea").fill("fog")
    pick_model(page, "demo-flux (")
    page.wait_for_function("() => document.querySelectorAll('#easel_mode input').length === 7")
    assert page.locator("#easel_negative textarea").is_disabled()  # greyed out and left out of Flux jobs ...
    assert page.locator("#easel_negative textarea").input_value() == "fog"  # ... but kept for the next model
    assert page.locator("#easel_mode input:checked").get_attribute("value") == "inpaint"  # chosen before instruct
    for hidden in ("easel_cn1", "easel_ref1", "easel_image_guidance", "easel_lora"):  # (no Flux LoRA on demo)
        assert not page.locator(f"#{hidden}").is_visible(), hidden
    pick_model(page, "demo-base (")
    page.locator("#easel_cn1").wait_for(state="visible")
    assert page.locator("#easel_cn1_enabled input").is_checked()
    assert page.locator("#easel_negative textarea").input_value() == "fog"
    # the LoRA picker lists the SD 1.5 LoRAs and adds the picked one's tag to the prompt
    page.locator("#easel_lora input").click()
    assert [text.strip() for text in page.locator("#easel_lora li").all_inner_texts()] == [
        "demo-lora", "demo-lora-diffusers"]
    page.locator("#easel_lora li", has_text="demo-lora").first.click()
    page.wait_for_function("() => document.querySelector('#easel_prompt textarea').value"
                           " === 'make it winter <lora:demo-lora:1>'")
    assert page.locator("#easel_negative textarea").is_enabled()
    # references back as they were (a hidden one is left out of jobs, its weight untouched)
    page.locator("#easel_ref1").get_by_text("Reference 1", exact=True).click()
    assert page.locator("#easel_ref1_weight input[type=number]").input_value() == "1"


def test_send_to_easel_from_txt2img_and_img2img_puts_their_result_in_the_sketch_editor(page):
    for tab, prompt, size in (("txt2img", "a harbour", (96, 64)), ("img2img", "a cottage", (80, 72))):
        open_tab(page, tab)
        page.locator(f"#{tab}_prompt textarea").fill(prompt)
        set_number(page, f"{tab}_width", size[0])
        set_number(page, f"{tab}_height", size[1])
        page.click(f"#{tab}_generate")  # the test WebUI's stand-in result (webui_real.stand_in_result)
        shown = page.locator(f"#{tab}_gallery img").first
        shown.wait_for()
        result = Image.open(io.BytesIO(page.request.get(urljoin(page.url, shown.get_attribute("src"))).body()))
        assert result.size == size
        page.click(f"#{tab}_send_to_easel")
        page.locator("#easel_prompt textarea").wait_for(state="visible")  # switched to the Easel tab
        page.wait_for_function("(text) => document.querySelector('#easel_prompt textarea').value === text",
                               arg=prompt)
        page.wait_for_function("(width) => document.querySelector('#easel_width input[type=number]').value === width",
                               arg=str(size[0]))  # the WebUI's send_size
        page.locator("#easel_picture img").first.wait_for()
        # What the editor holds, as a job gets it: upscaled by 2 with plain Lanczos, it is the sent picture's.
        choose(page, "easel_mode", "upscale")
        set_number(page, "easel_strength", 1)  # (from img2img it lands at the WebUI's 0.75: an upscale would refine)
        page.locator("#easel_upscaler input").click()
        page.locator("#easel_upscaler li", has_text="lanczos").first.click()
        before = page.locator("#easel_selected img").first.get_attribute("src") \
            if page.locator("#easel_selected img").count() else None
        page.click("#easel_generate")  # (a Lanczos upscale may show the same "Done" text as the last one)
        page.wait_for_function("""(before) => {
            const img = document.querySelector('#easel_selected img');
            return img && img.getAttribute('src') !== before;
        }""", arg=before)
        larger = image_of(page, "easel_selected").convert("RGB")
        expected = result.convert("RGB").resize((2 * size[0], 2 * size[1]), Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(larger), np.asarray(expected)), f"the picture sent from {tab}"


def test_cfg_scale_starts_on_auto_and_says_what_the_picked_model_gets(page):
    # A Flux Fill inpaint wants 30 and Flux's img2img 3.5: auto (0) sends none, the backend uses the model's.
    # (An older tab's saved default of 7 stays behind: it would run every Flux Fill inpaint at 7.)
    assert page.locator("#easel_cfg input[type=number]").input_value() == "0"
    cfg = page.locator("#easel_cfg")
    assert "0 = auto: 7, this model's own for inpaint" in cfg.inner_text(), cfg.inner_text()
    pick_model(page, "demo-flux (")
    page.wait_for_function("() => document.querySelector('#easel_cfg').innerText.includes('auto: 30,')")
    choose(page, "easel_mode", "img2img")
    page.wait_for_function("() => document.querySelector('#easel_cfg').innerText.includes('auto: 3.5, this "
                           "model\\'s own for img2img')")
    pick_model(page, "demo-base (")
    page.wait_for_function("() => document.querySelector('#easel_cfg').innerText.includes('auto: 7, this "
                           "model\\'s own for img2img')")


def test_send_to_easel_lands_in_the_mode_the_picture_came_from(page):
    choose(page, "easel_mode", "generate")  # which would ignore a picture sent
    for tab, sub, mode, strength in (("txt2img", None, "inpaint", "1"), ("img2img", "img2img", "img2img", "0.75"),
                                     ("img2img", "Inpaint", "inpaint", "0.75")):
        open_tab(page, tab)
        if sub:
            page.locator("#mode_img2img").get_by_role("button", name=sub, exact=True).click()
        page.click(f"#{tab}_generate")
        page.locator(f"#{tab}_gallery img").first.wait_for()
        page.click(f"#{tab}_send_to_easel")
        page.locator("#easel_prompt textarea").wait_for(state="visible")
        page.wait_for_function("(mode) => document.querySelector('#easel_mode input:checked').value === mode",
                               arg=mode)
        assert page.locator("#easel_strength input[type=number]").input_value() == strength, (tab, sub)


def test_a_flux_fill_inpaint_on_auto_cfg_is_saved_and_pasted_back_as_it_ran(page, webui, files):
    # Auto CFG ran the Fill model at its 30 and Flux runs its own Euler whatever sampler is picked: the
    # file name read the tab's "DPM++ 2M Karras"; PNG Info's infotext brings back the 30 that ran.
    pick_model(page, "demo-flux (")
    upload(page, "easel_picture", files["picture"])
    choose(page, "easel_mode", "inpaint")
    paint(page, (40, 40), (120, 90), (192, 128))
    page.locator("#easel_prompt textarea").fill("a blue door")
    set_number(page, "easel_steps", 2)
    set_number(page, "easel_seed", 31)
    assert generate(page).startswith("Done: 1 image"), text_of(page, "easel_progress")
    info = page.locator("#easel_info textarea").input_value()
    assert "Sampler: Euler, CFG scale: 30.0," in info, info
    (saved,) = [path for path in webui["root"].rglob("*.png") if Image.open(path).info.get("parameters") == info]
    assert saved.name.endswith("-31-2-Euler-30.0.png"), saved.name  # [seed]-[steps]-[sampler]-[cfg]

    pick_model(page, "demo-base (")
    choose(page, "easel_mode", "img2img")
    open_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved))
    page.wait_for_function("(info) => document.querySelector('#pnginfo_generation_info textarea').value === info",
                           arg=info)
    page.click("#easel_tab")
    page.wait_for_function("() => document.querySelector('#easel_mode input:checked').value === 'inpaint'")
    assert "demo-flux" in page.locator("#easel_model input").input_value()
    assert page.locator("#easel_cfg input[type=number]").input_value() == "30"
    page.wait_for_function("() => document.querySelector('#easel_cfg').innerText.includes('auto: 30,')")


def test_png_info_of_another_models_picture_leaves_cfg_on_auto_and_generate_for_inpaint(page, tmp_path):
    # A WebUI picture's "CFG scale: 7" is its own model's: pasted as it was, a Flux Fill inpaint ran at 7.
    from PIL.PngImagePlugin import PngInfo

    text = PngInfo()
    text.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64, "
                                "Model: v1-5-pruned-emaonly")
    path = tmp_path / "webui.png"
    picture(64, 64, seed=4).save(path, pnginfo=text)
    pick_model(page, "demo-flux (")
    set_number(page, "easel_cfg", 5)
    choose(page, "easel_mode", "generate")  # which would ignore the picture: inpaint, as from txt2img
    open_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    page.wait_for_function("() => document.querySelector('#pnginfo_generation_info textarea').value.includes('cat')")
    page.click("#easel_tab")
    page.wait_for_function("() => document.querySelector('#easel_prompt textarea').value === 'a cat'")
    assert page.locator("#easel_cfg input[type=number]").input_value() == "0"
    assert "demo-flux" in page.locator("#easel_model input").input_value()
    page.wait_for_function("() => document.querySelector('#easel_mode input:checked').value === 'inpaint'")
    page.wait_for_function("() => document.querySelector('#easel_cfg').innerText.includes('auto: 30,')")


def test_png_info_brings_back_the_mask_shaping_and_expand_an_easel_result_ran_with(page, tmp_path):
    # Mask grow, feather, soft inpainting, masked content, padding and an expand's sides are in an Easel
    # result's infotext; pasted without them, the tab reran the picture with whatever its sliders held.
    paste_easel_result(page, tmp_path / "easel.png", {
        "mode": "inpaint", "prompt": "a red door", "steps": 4, "model": "demo", "mask_grow": 20, "mask_feather": 4,
        "soft_inpaint": False, "fill": "blur", "mask_padding": 96})
    values = {elem_id: page.locator(f"#{elem_id} input[type=number]").input_value()
              for elem_id in ("easel_grow", "easel_feather", "easel_padding")}
    assert values == {"easel_grow": "20", "easel_feather": "4", "easel_padding": "96"}
    assert not page.locator("#easel_soft input").is_checked()
    assert page.locator("#easel_fill input").input_value() == "fill"

    # (another file: the same one again is no change to the upload)
    paste_easel_result(page, tmp_path / "expand.png", {"mode": "expand", "prompt": "a wide field", "steps": 4,
                                                       "model": "demo", "fill": "border", "expand_top": 32,
                                                       "expand_right": 64})
    sides = [page.locator(f"#easel_expand_{side} input[type=number]").input_value()
             for side in ("left", "top", "right", "bottom")]
    assert sides == ["0", "32", "64", "0"]
    assert page.locator("#easel_padding input[type=number]").input_value() == "96"  # (an expand names none)


def paste_easel_result(page, path: Path, parameters: dict) -> None:
    """Save a picture carrying ``parameters``' infotext at ``path``, read it in PNG Info and send it to Easel
    (as the WebUI's paste does when the tab opens), waiting until the prompt is pasted."""
    from PIL.PngImagePlugin import PngInfo

    from shared.infotext import infotext

    text = PngInfo()
    text.add_text("parameters", infotext(parameters, 3, (64, 64)))
    picture(64, 64, seed=4).save(path, pnginfo=text)
    open_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    prompt = parameters["prompt"]
    page.wait_for_function(f"() => document.querySelector('#pnginfo_generation_info textarea').value.includes("
                           f"'{prompt}')")
    page.click("#easel_tab")
    page.wait_for_function(f"() => document.querySelector('#easel_prompt textarea').value === '{prompt}'")
