"""The few places where gradio 3 (A1111 1.x pins 3.41.2) and gradio 4 (Forge) differ.

Both are tested in a real browser: gradio 3.41.2 (``tests/test_a1111_tab.py``) and gradio 4.40.0,
the version SD WebUI Forge pins (``tests/test_forge_tab.py``).
"""

import gradio as gr
from PIL import Image

GRADIO4 = int(gr.__version__.split(".")[0]) >= 4
# gradio 4 hands pictures to the browser as lossy WebP files unless told otherwise; results must
# reach the user (and "Send to") with every unpainted pixel as it was. gradio 3 sends PNG.
LOSSLESS = {"format": "png"} if GRADIO4 else {}
# gradio 4 runs each event one call at a time unless told otherwise (Forge's queue(64) does not set
# it), so a second browser's Generate would wait in gradio; Easel's server queues jobs itself.
# gradio 3 shares the queue's concurrency_count (the WebUI's 64) across events.
CONCURRENT = {"concurrency_limit": None} if GRADIO4 else {}


def picture_editor(label: str, elem_id: str):
    """An upload field the painter paints the mask on, in white."""
    if GRADIO4:
        return gr.ImageEditor(label=label, elem_id=elem_id, type="pil", image_mode="RGBA",
                              sources=["upload", "clipboard"], layers=False, transforms=(),
                              brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), **LOSSLESS)
    # image_mode None: gradio 3 converts the uploaded file to it with Pillow, which clips a 16-bit grey
    # picture white and a float one black; ``eight_bit_grey`` scales it (gradio 4's editor sends what the browser drew)
    return gr.Image(label=label, elem_id=elem_id, source="upload", tool="sketch", type="pil",
                    image_mode=None, brush_color="#ffffff")


def read_editor(value) -> tuple[Image.Image | None, Image.Image | None]:
    """(picture, painted strokes) from the editor's value in either gradio."""
    if value is None:
        return None, None
    if isinstance(value, Image.Image):
        return value, None
    if "image" in value:          # gradio 3 sketch: {"image", "mask"}, strokes white on black
        return value.get("image"), value.get("mask")
    layers = [layer for layer in value.get("layers") or [] if layer is not None]
    painted = None                # gradio 4: strokes live on transparent layers over "background"
    for layer in layers:
        painted = layer.convert("RGBA") if painted is None else Image.alpha_composite(painted, layer.convert("RGBA"))
    return value.get("background"), painted


def image_input(label: str, elem_id: str):
    """A plain picture upload, transparency kept (gradio's default RGB shows what lies under it: a sketch of
    dark lines on a clear layer came out all black) and a 16-bit one (a depth map) whole for
    ``eight_bit_grey``: the file's own mode, not one gradio converts it to."""
    if GRADIO4:
        return gr.Image(label=label, elem_id=elem_id, type="pil", sources=["upload", "clipboard"], image_mode=None,
                        **LOSSLESS)
    return gr.Image(label=label, elem_id=elem_id, type="pil", source="upload", image_mode=None)


def when_page_closes(blocks, fn) -> None:
    """Call ``fn`` (taking the page's ``gr.Request``) when the page is closed or reloaded: gradio 4's
    ``Blocks.unload`` (Forge's 4.40 has it); gradio 3 has no such event, and there a page's job runs on."""
    if hasattr(blocks, "unload"):
        blocks.unload(fn)


def run_script(code: str) -> dict:
    """An event's page script (run in the browser after the event's inputs are read), if any."""
    if not code:
        return {}
    return {"js": code} if GRADIO4 else {"_js": code}
