"""The few places where gradio 3 (A1111 1.x pins 3.41.2) and gradio 4 (Forge) differ.

Only the gradio 3 path is tested here (in a real browser); the gradio 4 path follows gradio 4's
documented ``ImageEditor`` API and is untested.
"""

import gradio as gr
from PIL import Image

GRADIO4 = int(gr.__version__.split(".")[0]) >= 4


def picture_editor(label: str, elem_id: str):
    """An upload field the painter paints the mask on, in white."""
    if GRADIO4:
        return gr.ImageEditor(label=label, elem_id=elem_id, type="pil", image_mode="RGBA",
                              sources=["upload", "clipboard"], layers=False, transforms=(),
                              brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
    return gr.Image(label=label, elem_id=elem_id, source="upload", tool="sketch", type="pil",
                    image_mode="RGBA", brush_color="#ffffff")


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
    """A plain picture upload."""
    if GRADIO4:
        return gr.Image(label=label, elem_id=elem_id, type="pil", sources=["upload", "clipboard"])
    return gr.Image(label=label, elem_id=elem_id, type="pil", source="upload")
