"""The only module that touches the WebUI: settings, the tab callback and "Send to" buttons, all
through the public extension API (``script_callbacks``, ``shared.opts``, the paste-params buttons)."""

from modules import shared as webui_shared

try:  # WebUI 1.8+ renamed the module; the old name stays as an alias there
    from modules import infotext_utils as paste
except ImportError:
    from modules import generation_parameters_copypaste as paste

from .jobs import Connection
from .protocol import DEFAULT_URL

SECTION = ("easel", "Easel")


def add_settings() -> None:
    opts, info = webui_shared.opts, webui_shared.OptionInfo
    opts.add_option("easel_url", info(DEFAULT_URL, "Easel backend address (ws://host:port/)", section=SECTION))
    opts.add_option("easel_token", info("", "Easel backend token (if the server was started with --token)",
                                        section=SECTION))


def connection() -> Connection:
    """The backend address as the settings say now (they can change while the WebUI runs)."""
    opts = webui_shared.opts
    return Connection(getattr(opts, "easel_url", None) or DEFAULT_URL, getattr(opts, "easel_token", None) or "")


def add_send_buttons(image, text) -> None:
    """"Send to img2img / inpaint": the WebUI copies the image and the infotext's fields over."""
    for tabname, button in paste.create_buttons(["img2img", "inpaint"]).items():
        paste.register_paste_params_button(paste.ParamBinding(
            paste_button=button, tabname=tabname, source_text_component=text, source_image_component=image))


def ui_tabs():
    from .tab import build  # gradio is imported only once the WebUI builds its UI
    return [(build(connection, add_send_buttons), "Easel", "easel")]


# (script_callbacks function, callback): registered by ``scripts/easel_tab.py``.
CALLBACKS = [("on_ui_settings", add_settings), ("on_ui_tabs", ui_tabs)]
