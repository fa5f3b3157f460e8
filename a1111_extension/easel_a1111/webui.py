"""The only module that touches the WebUI: settings, the tab callback, "Send to" buttons both ways,
saved UI defaults and saving results, all through the public extension API (``script_callbacks``,
``shared.opts``, the paste-params buttons, ``images.save_image``) and the WebUI's ui-config.json."""

import json
from types import SimpleNamespace

from modules import shared as webui_shared
from modules.ui_components import ToolButton

try:  # WebUI 1.8+ renamed the module; the old name stays as an alias there
    from modules import infotext_utils as paste
except ImportError:
    from modules import generation_parameters_copypaste as paste

from .jobs import Connection
from .protocol import DEFAULT_URL

SECTION = ("easel", "Easel")
TAB = "easel"  # the tab's id: "Send to Easel" pastes into the fields registered under it
SEND_SYMBOL = "\U0001f58c\ufe0f"  # a paintbrush, beside the WebUI's own send-to symbols

# WebUI components by elem_id, as the WebUI creates them (the "Send to Easel" buttons need the
# picture and text they send, created before the WebUI's own "Send to" buttons).
_created: dict = {}


def add_settings() -> None:
    opts, info = webui_shared.opts, webui_shared.OptionInfo
    opts.add_option("easel_url", info(DEFAULT_URL, "Easel backend address (ws://host:port/, or wss:// for a server "
                                                   "with a certificate)", section=SECTION))
    opts.add_option("easel_token", info("", "Easel backend token (if the server was started with --token)",
                                        section=SECTION))
    opts.add_option("easel_cert", info("", "Easel backend certificate: its PEM file (from `easel cert`) for a wss:// "
                                           "address; only a server holding its key is trusted", section=SECTION))


def connection() -> Connection:
    """The backend address as the settings say now (they can change while the WebUI runs)."""
    opts = webui_shared.opts
    return Connection(getattr(opts, "easel_url", None) or DEFAULT_URL, getattr(opts, "easel_token", None) or "",
                      getattr(opts, "easel_cert", None) or "")


def add_send_buttons(image, text) -> None:
    """"Send to img2img / inpaint": the WebUI copies the image and the infotext's fields over."""
    for tabname, button in paste.create_buttons(["img2img", "inpaint"]).items():
        paste.register_paste_params_button(paste.ParamBinding(
            paste_button=button, tabname=tabname, source_text_component=text, source_image_component=image))


def add_paste_fields(picture, fields) -> None:
    """What "Send to Easel" fills: the picture and the fields named after infotext keys."""
    paste.add_paste_fields(TAB, picture, fields)


def after_component(component, **kwargs) -> None:
    """"Send to Easel" beside the WebUI's own "Send to" buttons: txt2img's and img2img's results (with
    the source tab's prompt fields, as the WebUI sends txt2img's) and PNG Info (with the picture's
    infotext)."""
    elem_id = kwargs.get("elem_id")
    if not elem_id:
        return
    _created[elem_id] = component
    tabname = elem_id.split("_send_to_extras")[0] if elem_id.endswith("_send_to_extras") else None
    if tabname in ("txt2img", "img2img") and f"{tabname}_gallery" in _created:
        button = ToolButton(SEND_SYMBOL, elem_id=f"{tabname}_send_to_{TAB}",
                            tooltip="Send image and generation parameters to the Easel tab.")
        _created[f"{tabname}_send_to_{TAB}"] = button  # the tab sets its Mode from it
        paste.register_paste_params_button(paste.ParamBinding(
            paste_button=button, tabname=TAB, source_tabname=tabname,
            source_image_component=_created[f"{tabname}_gallery"]))
    # PNG Info's last "Send to"; only the first after PNG Info's text: other extensions make "Send to" rows of
    # their own (an image browser's), where a button bound to PNG Info's text would send the wrong picture.
    elif elem_id == "extras_tab" and "pnginfo_generation_info" in _created and f"{TAB}_tab" not in _created:
        button = paste.create_buttons([TAB])[TAB]
        _created[f"pnginfo_send_to_{TAB}"] = button  # the tab sets its Mode from it
        paste.register_paste_params_button(paste.ParamBinding(
            paste_button=button, tabname=TAB, source_text_component=_created["pnginfo_generation_info"],
            source_image_component=_created.get("pnginfo_image")))


def save(picture, infotext: str, mode: str, job: dict) -> None:
    """Keep a result as the WebUI keeps its own: when it saves every generated image, in its txt2img
    (generate) or img2img (the rest) outputs folder, named by its pattern, the infotext in the file
    (PNG "parameters", which PNG Info and "Send to" read back). ``job``: ``params.saving_fields``."""
    from modules import images  # the picture saving code: imported when there is a picture to save

    opts = webui_shared.opts
    if not opts.samples_save:
        return
    folder = opts.outdir_samples or (opts.outdir_txt2img_samples if mode == "generate"
                                     else opts.outdir_img2img_samples)
    extension = opts.samples_format
    # A copy: the WebUI's saving may change the picture it is given (Forge's "stealth infotext" writes
    # the parameters into the alpha channel's low bits), and the tab shows this one.
    picture = picture.copy() if extension.lower() in ("png", "webp") else picture.convert("RGB")
    # ``p``: what the file name pattern reads of a WebUI job ([steps], [sampler] ...), here the Easel job's.
    images.save_image(picture, folder, "", job["seed"], job["prompt"], extension, info=infotext,
                      p=SimpleNamespace(**job))


def inpaint_upload():
    """img2img's "Inpaint upload" picture and mask, where "Send to inpaint upload" puts a result and the
    mask painted for it (built before the extension tabs); None in a WebUI without them."""
    targets = _created.get("img_inpaint_base"), _created.get("img_inpaint_mask")
    return targets if all(target is not None for target in targets) else None


def saved_default(label: str):
    """The value Settings > Defaults saved for the Easel tab's field ``label`` (in the WebUI's ui-config.json,
    by the key the WebUI gives it); None when there is none."""
    try:
        with open(webui_shared.cmd_opts.ui_config_file, encoding="utf8") as file:
            return json.load(file).get(f"{TAB}/{label}/value")
    except (OSError, ValueError, AttributeError):  # none saved yet, or a file the WebUI itself reports
        return None


def ui_tabs():
    from .tab import Host, build  # gradio is imported only once the WebUI builds its UI
    # switch_to_img2img_tab: the WebUI's page script; "Inpaint upload" is img2img's fifth mode
    sent_from = {tab: _created[f"{tab}_send_to_{TAB}"] for tab in ("txt2img", "img2img")
                 if f"{tab}_send_to_{TAB}" in _created}
    pnginfo = (_created[f"pnginfo_send_to_{TAB}"], _created["pnginfo_generation_info"]) \
        if f"pnginfo_send_to_{TAB}" in _created else None
    host = Host(send_buttons=add_send_buttons, paste_fields=add_paste_fields, save=save,
                inpaint_upload=inpaint_upload(),
                show_inpaint_upload="(...args) => { switch_to_img2img_tab(4); return args; }", sent_from=sent_from,
                # (the WebUI's get_tab_index, as its own img2img submit reads the mode tab)
                img2img_tab="(...args) => { args[0] = get_tab_index('mode_img2img'); return args; }",
                pnginfo=pnginfo, saved_default=saved_default)
    return [(build(connection, host), "Easel", TAB)]


# (script_callbacks function, callback): registered by ``scripts/easel_tab.py``.
CALLBACKS = [("on_ui_settings", add_settings), ("on_after_component", after_component), ("on_ui_tabs", ui_tabs)]
