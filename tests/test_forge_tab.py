"""The Easel tab in a real browser inside the real SD WebUI Forge code (WebUI 1.10 base, gradio 4.40.0):
the packaged extension in Forge's ``extensions/``, mounted by its script loader with its settings,
infotext code, saved defaults and page JavaScript (``tests/webui_real.py`` in Forge's environment
``.venv-forge``), driven in headless Chromium against a real server on the demo models. gradio 4 differs
from gradio 3 where ``easel_a1111/compat.py`` says: the picture is an ``ImageEditor`` (a canvas with a
brush tool), and events run one at a time unless the tab says otherwise."""

from __future__ import annotations

import io
import time
from urllib.parse import urljoin

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from conftest import picture
from test_a1111_tab import (
    CHROMIUM,
    CHROMIUM_ARGS,
    RECORD_ERRORS,
    TIMEOUT,
    backend_down,
    check_window_widths,
    easel_errors,
    generate,
    open_tab,
    set_number,
    text_of,
    watch_progress,
    weights_with_ctrl_arrows,
)
from webui_env import FORGE, SETUP, serving, webui_folder, webui_source


@pytest.fixture(scope="module")
def forge(server, tmp_path_factory):
    """Forge with the packaged extension in its extensions/."""
    webui_source(FORGE)
    root = webui_folder(tmp_path_factory.mktemp("forge") / "data", settings={"easel_url": server.url})
    with serving(FORGE, root) as (url, _):
        yield {"url": url, "server": server.url, "root": root}


@pytest.fixture(scope="module")
def chromium(forge):
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: {SETUP[FORGE]}")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(chromium, url: str):
    """A page on the Easel tab, in a browser context of its own (another user)."""
    page = chromium.new_context(viewport={"width": 1400, "height": 1200}).new_page()
    page.set_default_timeout(TIMEOUT)
    page.add_init_script(RECORD_ERRORS)
    page.goto(url)
    open_tab(page, "Easel")
    page.locator("#easel_generate").wait_for()
    return page


@pytest.fixture(scope="module")
def page(chromium, forge):
    page = open_page(chromium, forge["url"])
    yield page
    errors = easel_errors(page)
    assert not errors, errors


def image_of(page, elem_id: str) -> Image.Image:
    """The picture an image component shows (gradio 4 serves them as files)."""
    source = page.locator(f"#{elem_id} img").first.get_attribute("src")
    body = page.request.get(urljoin(page.url, source)).body()
    return Image.open(io.BytesIO(body)).convert("RGBA")


def paint(page, start: tuple[float, float], end: tuple[float, float], size: tuple[int, int]) -> None:
    """Pick the editor's brush and drag it across the picture between two points in picture pixels."""
    options = page.locator("#easel_picture input[type=range]")  # the brush size, in the brush options
    page.locator("#easel_picture button[aria-label='Draw button']").click()
    # The brush options open over the picture (with a transition): a click elsewhere closes them, but
    # only once they are open, and strokes made while they are open land on them.
    options.wait_for(state="visible")
    options.fill("6")  # the brush's size: its default follows the editor's size on the page
    page.locator("#easel_prompt textarea").click()
    options.wait_for(state="hidden")
    canvas = page.locator("#easel_picture canvas").first
    box = canvas.bounding_box()
    at = lambda x, y: (box["x"] + x * box["width"] / size[0], box["y"] + y * box["height"] / size[1])  # noqa: E731
    # On a loaded machine the editor can drop a stroke made while its brush is still being switched
    # on (CI saw it); the same stroke twice paints the same mask whether or not the first one took.
    for _ in range(2):
        page.mouse.move(*at(*start))
        page.mouse.down()
        for i in range(1, 11):
            page.mouse.move(*at(start[0] + (end[0] - start[0]) * i / 10, start[1] + (end[1] - start[1]) * i / 10))
        page.mouse.up()


def test_paint_a_mask_in_the_gradio4_editor_generate_and_keep_every_unpainted_pixel(page, tmp_path):
    status = text_of(page, "easel_status")
    assert status.startswith("Easel backend at ") and "default model demo" in status, status
    path = tmp_path / "house.png"
    picture(192, 128, seed=11).save(path)
    page.locator("#easel_picture input[type=file]").set_input_files(str(path))
    page.locator("#easel_picture canvas[width='192']").wait_for()
    page.locator("#easel_prompt textarea").fill("a red door")
    set_number(page, "easel_steps", 4)
    set_number(page, "easel_seed", 5)
    paint(page, (30, 40), (60, 50), (192, 128))
    assert generate(page).startswith("Done: 1 image"), text_of(page, "easel_progress")
    assert page.locator("#easel_gallery img").count() >= 1

    before = np.asarray(Image.open(path).convert("RGBA"))
    after = np.asarray(image_of(page, "easel_selected"))
    assert after.shape == before.shape
    changed = np.argwhere(np.any(after != before, axis=-1))
    assert len(changed) > 100, "the painted area did not change"
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    assert left >= 30 - 60 and right <= 60 + 60 and top >= 40 - 60 and bottom <= 50 + 60, (top, left, bottom, right)
    assert (after[:, 125:] == before[:, 125:]).all() and (after[115:] == before[115:]).all()
    info = page.locator("#easel_info textarea").input_value()
    assert info.startswith("a red door\nSteps: 4, Sampler: DPM++ 2M Karras, CFG scale: 7.0, Seed: 5, Size: 192x128")

    # The result and the mask painted on gradio 4's editor (its layers), to the WebUI's "Inpaint upload".
    page.click("#easel_send_to_inpaint_upload")
    page.locator("#img_inpaint_mask img").first.wait_for()
    assert page.locator("#img2img_inpaint_upload_tab").is_visible()
    sent = np.asarray(image_of(page, "img_inpaint_base"), np.int16)
    # The WebUI's own picture fields hand pictures to the browser as gradio 4's lossy WebP (about 3.4 levels
    # off on average for this picture, up to 16 along a hard mask's edge): the result, not the input, is sent.
    assert sent.shape == after.shape and np.abs(sent - after).mean() < 8
    edited = np.any(after != before, axis=-1)
    assert np.abs(sent - after)[edited].mean() < np.abs(sent - before.astype(np.int16))[edited].mean() / 2
    mask = np.asarray(image_of(page, "img_inpaint_mask").convert("L"))
    assert mask.shape == (128, 192) and mask[45, 45] > 220 and mask[5, 5] < 32 and mask[:, 125:].max() < 32
    (top, left), (bottom, right) = np.argwhere(mask > 127).min(0), np.argwhere(mask > 127).max(0)
    assert 30 - 8 <= left and right <= 60 + 8 and 40 - 8 <= top and bottom <= 50 + 8, "only the stroke (brush 6)"
    open_tab(page, "Easel")

    # Picking a Flux model leaves out what it cannot take (gradio 4's updates), and back again.
    for model, takes in (("demo-flux (", False), ("Server default", True)):
        page.locator("#easel_model input").click()
        page.locator("ul.options li", has_text=model).first.click()
        page.locator("#easel_cn1").wait_for(state="visible" if takes else "hidden")
        assert page.locator("#easel_negative textarea").is_enabled() == takes
        assert page.locator("#easel_image_guidance").is_visible() == takes
    # An instruct-only model takes inpaint off the radio; the next model that has it brings it back.
    for model, mode in (("demo-instruct (", "instruct"), ("Server default", "inpaint")):
        page.locator("#easel_model input").click()
        page.locator("ul.options li", has_text=model).first.click()
        page.wait_for_function("(mode) => document.querySelector('#easel_mode input:checked').value === mode",
                               arg=mode)


def test_backend_down_reads_as_a_sentence(page, forge):
    with backend_down(page, forge["server"]) as down:
        assert text_of(page, "easel_status").strip() == (
            f"Cannot reach the Easel backend at {down} (nothing is listening at that address and port): "
            "start it with easel serve, "
            "or set its address in Settings > Easel.")


def test_pick_the_second_result_of_a_batch(page):
    page.locator("#easel_prompt textarea").fill("a lighthouse at dusk")
    page.locator("#easel_mode label", has_text="generate").click()
    for field, value in (("easel_steps", 2), ("easel_seed", 99), ("easel_batch", 2), ("easel_width", 64),
                         ("easel_height", 64)):
        set_number(page, field, value)
    assert generate(page).startswith("Done: 2 images in ")
    assert "Seed: 99," in page.locator("#easel_info textarea").input_value()
    page.locator("#easel_gallery button.thumbnail-item").nth(1).click()  # gradio 4's select event
    page.wait_for_function("() => document.querySelector('#easel_info textarea').value.includes('Seed: 100,')")
    assert image_of(page, "easel_selected").size == (64, 64)


def test_two_browsers_generate_at_once_and_esc_cancels(page, chromium, forge):
    # Forge's queue(64) leaves gradio 4 events one at a time; the tab's events are unlimited, so a second
    # user's job reaches the backend's queue ("Waiting: 1 job ahead") while the first one runs.
    other = open_page(chromium, forge["url"])
    try:
        for tab in (page, other):
            tab.locator("#easel_prompt textarea").fill("a lighthouse")
            tab.locator("#easel_mode label", has_text="generate").click()
            set_number(tab, "easel_steps", 150 if tab is page else 2)  # the first job runs long
            set_number(tab, "easel_width", 512 if tab is page else 64)
            set_number(tab, "easel_height", 512 if tab is page else 64)
            set_number(tab, "easel_batch", 1)
            watch_progress(tab)
        page.keyboard.press("Control+Enter")  # the WebUI's shortcut, in Forge's script.js
        page.wait_for_function("() => window.easelSeen.some(text => text.startsWith('Step '))", timeout=TIMEOUT * 2)
        other.click("#easel_generate")
        other.wait_for_function("() => window.easelSeen.some(text => /^(Waiting|Running|Done)/.test(text))",
                                timeout=TIMEOUT * 2)
        seen = other.evaluate("window.easelSeen")
        assert any(text.startswith("Waiting: 1 job ahead") for text in seen), (seen, page.evaluate("window.easelSeen"))
        # a waiting job can be cancelled too: the button shows while the line says "Waiting: …"
        other.wait_for_function("() => document.querySelector('#easel_interrupt').style.display === 'block'")
        page.keyboard.press("Escape")
        page.wait_for_function("() => window.easelSeen.some(text => text.trim() === 'Cancelled.')")
        other.wait_for_function("() => window.easelSeen.some(text => text.startsWith('Done: 1 image'))",
                                timeout=TIMEOUT * 2)
        assert not easel_errors(other), easel_errors(other)
    finally:
        other.context.close()


def test_ctrl_arrows_weight_words_as_in_forges_prompts(page):
    weights_with_ctrl_arrows(page)


def test_closing_the_page_cancels_its_job(chromium, forge, server):
    # A closed (or reloaded) page left its job running on the backend to its last step, every other job
    # waiting behind it; gradio 4 says when a page goes (Blocks.unload), and the tab cancels the page's job.
    closing = open_page(chromium, forge["url"])
    closing.locator("#easel_prompt textarea").fill("a lighthouse")
    closing.locator("#easel_mode label", has_text="generate").click()
    set_number(closing, "easel_steps", 150)
    set_number(closing, "easel_width", 512)
    set_number(closing, "easel_height", 512)
    set_number(closing, "easel_batch", 4)  # (minutes to run to its end)
    watch_progress(closing)
    closing.click("#easel_generate")
    # (any step: the page shows the latest of the updates that reach it, and under load skips some,
    # step 2 among them in CI)
    try:
        closing.wait_for_function("() => window.easelSeen.some(text => text.startsWith('Step '))",
                                  timeout=TIMEOUT * 2)
    except PlaywrightTimeout:
        raise AssertionError(f"no step in {closing.evaluate('window.easelSeen')}") from None
    queue = server.server.queue
    assert queue.running is not None
    closing.context.close()
    deadline = time.monotonic() + 15
    while queue.running is not None and time.monotonic() < deadline:  # (no event of the backend's to await)
        time.sleep(0.1)
    assert queue.running is None, "the closed page's job still runs"


def test_upscale_makes_the_picture_larger(page, tmp_path):
    path = tmp_path / "harbour.png"
    picture(192, 128, seed=11).save(path)
    page.locator("#easel_picture input[type=file]").set_input_files(str(path))
    page.locator("#easel_picture canvas[width='192']").wait_for()
    page.locator("#easel_mode label", has_text="upscale").click()
    assert generate(page).startswith("Done: 1 image"), text_of(page, "easel_progress")
    larger = image_of(page, "easel_selected")
    assert larger.size == (384, 256), "Upscale by 2 with the server's first upscaler"
    back = np.asarray(larger.convert("RGB").resize((192, 128), Image.Resampling.BOX), np.int16)
    assert np.abs(back - np.asarray(Image.open(path).convert("RGB"), np.int16)).mean() < 8
    assert "Easel mode: upscale" in page.locator("#easel_info textarea").input_value()


def png_of(page, locator) -> Image.Image:
    """A picture the page shows from a file (gradio 4), as the browser got it."""
    body = page.request.get(urljoin(page.url, locator.get_attribute("src"))).body()
    return Image.open(io.BytesIO(body)).convert("RGB")


def upscaled_by_easel(page) -> Image.Image:
    """Upscale the picture in Easel's editor by 2 with plain Lanczos: what the editor holds, as a job gets it."""
    page.locator("#easel_mode label", has_text="upscale").click()
    page.locator("#easel_upscaler input").click()
    page.locator("ul.options li", has_text="lanczos").first.click()
    set_number(page, "easel_upscale_by", 2)
    set_number(page, "easel_strength", 1)  # (a picture sent from img2img lands at 0.75: an upscale would refine)
    # An upscale by Lanczos takes no time: the progress line may go from one "Done: 1 image in 0.0 s." to
    # the same text with nothing to see in between, so the new result is what shows that it ran.
    shown = page.locator("#easel_selected img")
    before = shown.first.get_attribute("src") if shown.count() else None
    page.click("#easel_generate")
    page.wait_for_function("""(before) => {
        const img = document.querySelector('#easel_selected img');
        return img && img.getAttribute('src') !== before;
    }""", arg=before)
    assert text_of(page, "easel_progress").startswith("Done: 1 image"), text_of(page, "easel_progress")
    return image_of(page, "easel_selected").convert("RGB")


def test_send_to_easel_fills_the_gradio4_editor_from_txt2img_img2img_and_png_info(page, forge):
    for tab, prompt, size in (("txt2img", "a harbour", (96, 64)), ("img2img", "a cottage", (80, 72))):
        open_tab(page, tab)
        page.locator(f"#{tab}_prompt textarea").fill(prompt)
        set_number(page, f"{tab}_seed", 40)
        set_number(page, f"{tab}_width", size[0])
        set_number(page, f"{tab}_height", size[1])
        if tab == "img2img":
            page.evaluate("switch_to_img2img_tab(4)")  # the WebUI's own script: its Inpaint upload tab
        page.click(f"#{tab}_generate")  # the test WebUI's stand-in result (webui_real.stand_in_result)
        shown = page.locator(f"#{tab}_gallery img").first
        shown.wait_for()
        result = png_of(page, shown)
        assert result.size == size
        page.click(f"#{tab}_send_to_easel")
        page.locator("#easel_prompt textarea").wait_for(state="visible")  # switched to the Easel tab
        page.wait_for_function("(text) => document.querySelector('#easel_prompt textarea').value === text",
                               arg=prompt)
        assert page.locator("#easel_seed input").input_value() == "40"  # the WebUI's send_seed
        if tab == "img2img":  # made in img2img's Inpaint upload tab, it lands in inpaint (from txt2img's upscale)
            page.wait_for_function("() => document.querySelector('#easel_mode input:checked').value === 'inpaint'")
        page.locator(f"#easel_picture canvas[width='{size[0]}']").wait_for()
        page.wait_for_function("(width) => document.querySelector('#easel_width input[type=number]').value === width",
                               arg=str(size[0]))  # the WebUI's send_size
        larger = upscaled_by_easel(page)
        assert larger.size == (2 * size[0], 2 * size[1])
        assert np.array_equal(np.asarray(larger), np.asarray(result.resize(larger.size, Image.Resampling.LANCZOS))), \
            f"the picture sent from {tab} is not the one in the editor"

    # A result of Easel's own, saved with its infotext: PNG Info reads it and sends it back.
    page.locator("#easel_prompt textarea").fill("a lighthouse")
    page.locator("#easel_mode label", has_text="generate").click()
    for field, value in (("easel_steps", 2), ("easel_seed", 7), ("easel_width", 64), ("easel_height", 64)):
        set_number(page, field, value)
    assert generate(page).startswith("Done: 1 image"), text_of(page, "easel_progress")
    info = page.locator("#easel_info textarea").input_value()
    (saved,) = [path for path in forge["root"].rglob("*.png") if Image.open(path).info.get("parameters") == info]
    page.locator("#easel_prompt textarea").fill("")
    set_number(page, "easel_seed", -1)
    open_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved))
    page.wait_for_function("(info) => document.querySelector('#pnginfo_generation_info textarea').value === info",
                           arg=info)
    page.click("#easel_tab")
    page.locator("#easel_prompt textarea").wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('#easel_prompt textarea').value === 'a lighthouse'")
    assert page.locator("#easel_seed input").input_value() == "7"
    page.locator("#easel_picture canvas[width='64']").wait_for()
    larger = upscaled_by_easel(page)
    expected = Image.open(saved).convert("RGB")
    assert np.array_equal(np.asarray(larger), np.asarray(expected.resize((128, 128), Image.Resampling.LANCZOS)))


def test_the_tab_keeps_the_webuis_look_in_a_wide_and_a_narrow_window(page):
    # (this stand-in Forge has no refresh button by its checkpoint list: the seed's dice is the WebUI's tool look)
    try:
        check_window_widths(page, "#easel_random_seed")
    finally:
        page.set_viewport_size({"width": 1400, "height": 1200})  # as the other tests of this page have it
