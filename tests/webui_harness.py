"""A WebUI-shaped gradio app for the browser tests; runs in the WebUI-like environment (.venv-webui,
gradio 3.41.2 as A1111 1.x) or the Forge-like one (.venv-forge, gradio 4.40.0 as SD WebUI Forge).

It does what the WebUI does with an extension: loads every ``extensions/*/scripts/*.py`` by path,
calls the registered settings and tab callbacks, renders each tab into a ``gr.TabItem`` of the main
``gr.Blocks``, connects the "Send to" buttons to img2img / inpaint tabs, and serves with the queue.
The WebUI's own tabs are reduced to the fields the paste mechanism fills.

    python webui_harness.py EXTENSIONS_DIR PORT CONFIG_JSON
"""

import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "webui_stub"))

import gradio as gr  # noqa: E402

GRADIO4 = int(gr.__version__.split(".")[0]) >= 4

from modules import infotext_utils, script_callbacks, shared  # noqa: E402


def load_scripts(extensions: Path) -> None:
    for script in sorted(extensions.glob("*/scripts/*.py")):
        spec = importlib.util.spec_from_file_location(script.stem, script)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def webui_tab(name: str, sketch: bool) -> None:
    """img2img / inpaint, reduced to the picture and the fields infotext pastes into."""
    with gr.TabItem(name, id=name, elem_id=f"tab_{name}"):
        if GRADIO4:
            image = (gr.ImageEditor(sources=["upload"], type="pil", elem_id=f"{name}_image") if sketch
                     else gr.Image(sources=["upload"], type="pil", elem_id=f"{name}_image"))
        elif sketch:
            image = gr.Image(source="upload", tool="sketch", type="pil", elem_id=f"{name}_image")
        else:
            image = gr.Image(source="upload", type="pil", elem_id=f"{name}_image")
        prompt = gr.Textbox(label="Prompt", elem_id=f"{name}_prompt")
        steps = gr.Textbox(label="Steps", elem_id=f"{name}_steps")
        seed = gr.Textbox(label="Seed", elem_id=f"{name}_seed")
        infotext_utils.add_paste_fields(name, image, [(prompt, "Prompt"), (steps, "Steps"), (seed, "Seed")])


def settings_tab() -> None:
    """The settings the extension registered, editable like the WebUI's Settings page."""
    keys = sorted(shared.opts.data_labels)
    with gr.TabItem("Settings", id="settings", elem_id="tab_settings"):
        boxes = [gr.Textbox(value=getattr(shared.opts, key), label=shared.opts.data_labels[key].label,
                            elem_id=f"setting_{key}") for key in keys]
        apply = gr.Button("Apply settings", elem_id="settings_submit")
        done = gr.Markdown(elem_id="settings_result")

        def save(*values):
            for key, value in zip(keys, values):
                setattr(shared.opts, key, value)
            return "Applied: " + ", ".join(f"{key} = {value}" for key, value in zip(keys, values))

        apply.click(save, inputs=boxes, outputs=[done])


def main(extensions: str, port: str, config: str) -> None:
    shared.opts.data.update(json.loads(Path(config).read_text()))
    load_scripts(Path(extensions))
    script_callbacks.ui_settings_callback()
    interfaces = script_callbacks.ui_tabs_callback()  # the WebUI builds extension tabs first, too
    with gr.Blocks(analytics_enabled=False, title="Stable Diffusion") as demo:
        with gr.Tabs(elem_id="tabs"):
            webui_tab("img2img", sketch=False)
            webui_tab("inpaint", sketch=True)
            for interface, label, ifid in interfaces:
                with gr.TabItem(label, id=ifid, elem_id=f"tab_{ifid}"):
                    interface.render()
            settings_tab()
        infotext_utils.connect_paste_params_buttons()
    # gradio 3's first queue() argument is the concurrency; gradio 4's is a status rate
    queued = demo.queue(default_concurrency_limit=64) if GRADIO4 else demo.queue(64)
    queued.launch(server_name="127.0.0.1", server_port=int(port), show_api=False, quiet=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
