"""The WebUI's paste-params mechanism ("Send to img2img"), same names and signatures.

``connect_paste_params_buttons`` is a small version of the WebUI's: it copies the source image to
the destination tab's ``init_img`` and the infotext's values into the destination's paste fields.
"""

import json
import re
import sys

import gradio as gr

sys.modules["modules.generation_parameters_copypaste"] = sys.modules[__name__]  # the pre-1.8 name, as there

paste_fields = {}
registered_param_bindings = []


class ParamBinding:
    def __init__(self, paste_button, tabname, source_text_component=None, source_image_component=None,
                 source_tabname=None, override_settings_component=None, paste_field_names=None):
        self.paste_button, self.tabname = paste_button, tabname
        self.source_text_component, self.source_image_component = source_text_component, source_image_component
        self.source_tabname, self.override_settings_component = source_tabname, override_settings_component
        self.paste_field_names = paste_field_names or []


def add_paste_fields(tabname, init_img, fields, override_settings_component=None):
    paste_fields[tabname] = {"init_img": init_img, "fields": fields,
                             "override_settings_component": override_settings_component}


def create_buttons(tabs_list):
    return {tab: gr.Button(f"Send to {tab}", elem_id=f"{tab}_tab") for tab in tabs_list}


def bind_buttons(buttons, send_image, send_generate_info):
    for tabname, button in buttons.items():
        text = send_generate_info if isinstance(send_generate_info, gr.components.Component) else None
        register_paste_params_button(ParamBinding(paste_button=button, tabname=tabname, source_text_component=text,
                                                  source_image_component=send_image))


def register_paste_params_button(binding):
    registered_param_bindings.append(binding)


_PAIR = re.compile(r'\s*([\w][\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_generation_parameters(text):
    """Prompt, negative prompt and the ``Key: value`` pairs of the last line."""
    *lines, last = text.strip().split("\n")
    result = {"Prompt": "", "Negative prompt": ""}
    for line in lines:
        if line.startswith("Negative prompt:"):
            result["Negative prompt"] = line[len("Negative prompt:"):].strip()
        else:
            result["Prompt"] += line
    for key, value in _PAIR.findall(last):
        result[key] = json.loads(value) if value.startswith('"') else value
    return result


def connect_paste_params_buttons():
    for binding in registered_param_bindings:
        destination = paste_fields[binding.tabname]
        if binding.source_image_component is not None:
            binding.paste_button.click(fn=lambda image: image, inputs=[binding.source_image_component],
                                       outputs=[destination["init_img"]], show_progress=False)
        if binding.source_text_component is not None:
            fields = destination["fields"]

            def paste(text, fields=fields):
                values = parse_generation_parameters(text or "")
                return [gr.update(value=values[name]) if name in values else gr.update() for _, name in fields]

            binding.paste_button.click(fn=paste, inputs=[binding.source_text_component],
                                       outputs=[component for component, _ in fields], show_progress=False)
