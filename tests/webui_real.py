"""The real WebUI around the Easel extension, for the host tests: AUTOMATIC1111 1.8.0 (gradio 3,
``.venv-webui``) or Forge (gradio 4, ``.venv-forge``) from unmodified source (see
``webui_source.py``), in the host's environment.

What runs as it is: the WebUI's command line and paths, its settings (``shared.opts`` from
``shared_options`` and the saved ``config.json``), extension listing and the script loader
(``extensions`` / ``scripts.load_scripts``), ``script_callbacks``, the infotext / paste-params code
(``infotext_utils``), saved UI defaults (``ui_loadsave``, ``ui-config.json``), the Settings page
(``ui_settings``, with its Defaults tab), the output panels with their "Send to" buttons
(``ui_common``), picture saving and reading (``images``), the gradio patches and the page's own
JavaScript and CSS (``ui_gradio_extensions``; ``gradio_extensons``, in Forge ``gradio_extensions``). The
page holds txt2img and img2img (their output panels and the fields infotext pastes into; their Generate
puts a stand-in picture in the panel), PNG Info, the extension tabs and Settings, in the WebUI's tab ids.

What cannot run without torch and the diffusion code is replaced by the small stubs in ``STUBS``.

    python webui_real.py SOURCE DATA_DIR PORT             # serve (extensions in DATA_DIR/extensions)
    python webui_real.py SOURCE DATA_DIR --dump-ui        # build the page, save ui-config.json, exit
    python webui_real.py SOURCE DATA_DIR --run-installer  # run each extension's install.py as the
                                                          # WebUI does, printing the commands it would run
"""

import importlib
import os
import sys
import types

SOURCE, DATA = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
MODE = sys.argv[3] if sys.argv[3].startswith("--") else "--serve"
PORT = int(sys.argv[3]) if MODE == "--serve" else None
# The WebUI reads its command line while its modules load. Installed as usual, its data folder is its
# own folder, which gradio may then serve files from (the page's scripts): here they are two.
sys.argv = ["webui.py", "--data-dir", DATA, "--gradio-allowed-path", SOURCE, "--skip-version-check"]
os.environ.setdefault("IGNORE_CMD_ARGS_ERRORS", "1")  # Forge's flags differ a little
sys.path.insert(0, SOURCE)
FORGE = os.path.isdir(os.path.join(SOURCE, "modules_forge"))


def unavailable(*args, **kwargs):
    raise NotImplementedError("a torch-heavy part of the WebUI, stubbed in this test")


class _Repo:
    """No git metadata for extensions (GitPython is not installed; the WebUI tolerates the error)."""

    def __init__(self, *args, **kwargs):
        raise OSError("no git in this test")


# name -> (why it is stubbed, its attributes): the modules the page needs that import torch, the
# diffusion repositories or other WebUI parts that cannot run here. Nothing the extension calls.
STUBS = {
    "modules.paths": ("needs the Stable Diffusion repositories on disk", {}),  # filled below
    "modules.safe": ("torch's safe unpickler", {}),
    "modules.sd_models_types": ("imports ldm", {"WebuiSdModel": object}),
    "modules.gitpython_hack": ("GitPython", {"Repo": _Repo}),
    "modules.interrogate": ("CLIP / BLIP interrogation", {"category_types": lambda: [], "InterrogateModels": object}),
    "modules.sd_emphasis": ("torch", {"options": [], "get_options_descriptions": lambda: ""}),
    "modules.processing": ("the diffusion itself", {"old_hires_fix_first_pass_dimensions": unavailable}),
    "modules.ui": ("the WebUI's own page (this file builds a smaller one)", {}),
    "modules.sd_samplers": ("k-diffusion samplers", {"samplers_map": {}, "all_samplers": [], "samplers": []}),
    "modules.devices": ("torch devices", {"torch_gc": lambda: None}),
    "modules.sd_models": ("checkpoints", {"checkpoints_list": {}, "checkpoint_tiles": lambda *a: [],
                                          "list_models": lambda: None, "unload_model_weights": unavailable,
                                          "send_model_to_device": unavailable}),
    "modules.sd_vae": ("VAE loading", {"vae_dict": {}, "refresh_vae_list": lambda: None}),
    "modules.sd_hijack": ("attention optimisations", {"optimizers": []}),
    "modules.sd_unet": ("UNet options", {"unet_options": [], "list_unets": lambda: None}),
    "modules.realesrgan_model": ("upscaler weights", {"get_realesrgan_models": lambda _: []}),
    "modules.dat_model": ("upscaler weights", {"get_dat_models": lambda _: []}),
    "modules.sysinfo": ("system report (torch)", {}),
    "modules.hypernetworks": ("torch", {}),
    "modules.hypernetworks.hypernetwork": ("torch", {"list_hypernetworks": lambda _: {}}),
}


class _State:
    """Forge's job state; only the Settings page's Reload UI button reaches it."""

    request_restart = staticmethod(unavailable)


def _checkpoint_manager_ui():
    """Forge's quicksettings models row (its real one loads the model lists through torch)."""
    import gradio as gr
    from modules import shared

    # As the real one does when nothing is chosen yet: the first checkpoint found (here a name only).
    # Forge's infotext paste compares a picture's "Model" with it and fails on None.
    if shared.opts.sd_model_checkpoint in (None, "None", "none", ""):
        shared.opts.set("sd_model_checkpoint", "v1-5-pruned-emaonly.safetensors [6ce0161689]")
    entry = sys.modules["modules_forge.main_entry"]
    entry.ui_checkpoint = gr.Dropdown(label="Checkpoint", choices=[], elem_classes=["model_selection"])
    entry.ui_vae = gr.Dropdown(label="VAE / Text Encoder", choices=[], multiselect=True, value=[])


if FORGE:
    import argparse

    STUBS.update({
        "backend": ("Forge's diffusion engine (not in the fixture)", {"__path__": []}),
        "backend.args": ("Forge's engine's command line", {
            "parser": argparse.ArgumentParser(add_help=False), "dynamic_args": {},
            "args": argparse.Namespace(cuda_stream=False, pin_shared_memory=False)}),
        "backend.memory_management": ("Forge's engine", {"xformers_enabled": lambda: False}),
        "backend.utils": ("Forge's engine", {}),
        "modules.profiling": ("torch profiler", {}),
        "modules.shared_state": ("imports torch in Forge", {"State": _State}),
        "modules_forge.main_entry": ("Forge's model manager (torch)", {
            "module_list": {}, "make_checkpoint_manager_ui": _checkpoint_manager_ui}),
        # infotext parsing asks it whether a prompt uses (emphasis:1.2); every prompt here reads as plain
        "modules.prompt_parser": ("imports torch in Forge", {"parse_prompt_attention": lambda text: [[text, 1.0]]}),
        "pillow_avif": ("an image plugin the fixture's environment lacks", {}),
    })


def install_stubs() -> None:
    import modules.paths_internal as internal

    STUBS["modules.paths"][1].update({key: value for key, value in vars(internal).items() if not key.startswith("__")},
                                     paths={}, sd_path=SOURCE)
    for name, (_why, attributes) in STUBS.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)


def initialize() -> None:
    """What ``shared_init.initialize`` does for settings (that module imports torch)."""
    from modules import options, shared, shared_options, shared_state

    shared.options_templates = shared_options.options_templates
    shared.opts = options.Options(shared_options.options_templates, shared_options.restricted_opts)
    shared.restricted_opts = shared_options.restricted_opts
    try:
        shared.opts.load(shared.config_filename)
    except FileNotFoundError:
        pass
    shared.state = shared_state.State()
    from modules import styles
    shared.prompt_styles = styles.StyleDatabase(shared.styles_filename)
    shared.mem_mon = types.SimpleNamespace(disabled=True)  # the GPU memory monitor (modules.memmon: torch)


def webui_tab(tabname: str):
    """txt2img / img2img: the fields their infotext paste fills, and the real output panel."""
    import gradio as gr
    from modules import infotext_utils, ui_common

    upload = {"sources": ["upload"]} if FORGE else {"source": "upload"}
    with gr.Blocks(analytics_enabled=False) as interface:
        # the page's hidden placeholder (the WebUI makes it in txt2img): settings not on the Settings page
        interface.dummy = gr.Label(visible=False) if tabname == "txt2img" else None
        with gr.Row():
            with gr.Column():
                image = inpaint = None
                if tabname == "img2img":  # its modes, in the order the WebUI's switch_to_* scripts count
                    with gr.Tabs(elem_id="mode_img2img"):
                        with gr.TabItem("img2img", id="img2img", elem_id="img2img_img2img_tab"):
                            image = gr.Image(label="Image for img2img", elem_id="img2img_image", type="pil",
                                             **upload)
                        with gr.TabItem("Sketch", id="img2img_sketch", elem_id="img2img_img2img_sketch_tab"):
                            pass
                        with gr.TabItem("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab"):
                            inpaint = gr.Image(label="Image for inpainting with mask", elem_id="img2maskimg",
                                               type="pil", **(upload if FORGE else {**upload, "tool": "sketch"}))
                        with gr.TabItem("Inpaint sketch", id="inpaint_sketch", elem_id="img2img_inpaint_sketch_tab"):
                            pass
                        with gr.TabItem("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab"):
                            gr.Image(label="Image for img2img", elem_id="img_inpaint_base", type="pil", **upload)
                            gr.Image(label="Mask", elem_id="img_inpaint_mask", type="pil", image_mode="RGBA",
                                     **upload)
                        with gr.TabItem("Batch", id="batch", elem_id="img2img_batch_tab"):
                            pass
                prompt = gr.Textbox("", label="Prompt", elem_id=f"{tabname}_prompt", lines=2)  # value='' as the
                negative = gr.Textbox("", label="Negative prompt", elem_id=f"{tabname}_neg_prompt")  # WebUI's toprow
                steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{tabname}_steps")
                seed = gr.Number(label="Seed", value=-1, elem_id=f"{tabname}_seed")
                cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id=f"{tabname}_cfg_scale")
                width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{tabname}_width")
                height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{tabname}_height")
                generate = gr.Button("Generate", elem_id=f"{tabname}_generate")
            with gr.Column():
                panel = ui_common.create_output_panel(tabname, f"outputs/{tabname}")
        # In place of the diffusion (stubbed): a picture of the asked size in the real output panel, so its
        # "Send to" buttons (the WebUI's gallery code and page script) have a result to send.
        generate.click(stand_in_result, inputs=[seed, width, height], outputs=[panel.gallery])
        fields = [(prompt, "Prompt"), (negative, "Negative prompt"), (steps, "Steps"), (seed, "Seed"),
                  (cfg, "CFG scale"), (width, "Size-1"), (height, "Size-2")]
        infotext_utils.add_paste_fields(tabname, image, fields, None)
        if tabname == "img2img":
            infotext_utils.add_paste_fields("inpaint", inpaint, list(fields), None)
    return interface


def stand_in_result(seed, width, height) -> list:
    """What txt2img / img2img would make: gradients of the asked size, a plane set by the seed."""
    from PIL import Image

    size = (int(width), int(height))
    planes = (Image.linear_gradient("L").resize(size), Image.radial_gradient("L").resize(size),
              Image.new("L", size, int(seed or 0) % 256))
    return [Image.merge("RGB", planes)]


def extras_tab():
    """Extras, reduced to its picture (where "Send to extras" puts one)."""
    import gradio as gr
    from modules import infotext_utils

    with gr.Blocks(analytics_enabled=False) as interface:
        image = gr.Image(label="Source", elem_id="extras_image", type="pil",
                         **({"sources": ["upload"]} if FORGE else {"source": "upload"}))
    infotext_utils.add_paste_fields("extras", image, None)
    return interface


def pnginfo_tab():
    """PNG Info as the WebUI builds it: a picture in, its infotext out, "Send to" buttons."""
    import gradio as gr
    from modules import images, infotext_utils

    with gr.Blocks(analytics_enabled=False) as interface:
        image = gr.Image(elem_id="pnginfo_image", label="Source", type="pil",
                         **({"sources": ["upload"]} if FORGE else {"source": "upload"}))
        generation_info = gr.Textbox(elem_id="pnginfo_generation_info", label="Parameters")
        with gr.Row():
            buttons = infotext_utils.create_buttons(["txt2img", "img2img", "inpaint", "extras"])
        for tabname, button in buttons.items():
            infotext_utils.register_paste_params_button(infotext_utils.ParamBinding(
                paste_button=button, tabname=tabname, source_text_component=generation_info,
                source_image_component=image))
        # the WebUI's run_pnginfo reads the same field (modules.extras imports torch)
        image.change(lambda picture: images.read_info_from_image(picture)[0] if picture else "", inputs=[image],
                     outputs=[generation_info])
    return interface


def build():
    import gradio as gr
    from modules import infotext_utils, script_callbacks, scripts, shared, ui_loadsave, ui_settings
    from modules.ui_gradio_extensions import reload_javascript

    reload_javascript()
    infotext_utils.reset()
    settings = ui_settings.UiSettings()
    if hasattr(settings, "register_settings"):  # Forge registers the settings first, A1111 in create_ui
        settings.register_settings()
    txt2img = webui_tab("txt2img")
    dummy = txt2img.dummy
    interfaces = [(txt2img, "txt2img", "txt2img"), (webui_tab("img2img"), "img2img", "img2img"),
                  (extras_tab(), "Extras", "extras"), (pnginfo_tab(), "PNG Info", "pnginfo")]
    loadsave = ui_loadsave.UiLoadsave(shared.cmd_opts.ui_config_file)
    settings.create_ui(loadsave, dummy)
    interfaces += script_callbacks.ui_tabs_callback()
    interfaces += [(settings.interface, "Settings", "settings")]
    with gr.Blocks(theme=shared.gradio_theme, analytics_enabled=False, title="Stable Diffusion") as demo:
        settings.add_quicksettings()
        infotext_utils.connect_paste_params_buttons()
        with gr.Tabs(elem_id="tabs") as tabs:
            for interface, label, ifid in interfaces:
                with gr.TabItem(label, id=ifid, elem_id=f"tab_{ifid}"):
                    interface.render()
                if ifid not in ("extensions", "settings"):
                    loadsave.add_block(interface, ifid)
            loadsave.add_component(f"webui/Tabs@{tabs.elem_id}", tabs)
            loadsave.setup_ui()
        settings.add_functionality(demo)
        del scripts  # (imported for the loader's state, used by the callbacks above)
    loadsave.dump_defaults()
    demo.ui_loadsave = loadsave
    demo.easel_test_tabs = interfaces
    return demo


def run_installers() -> None:
    """The WebUI's launch helpers (``launch.is_installed``, ``launch.run_pip``) for each extension's
    install.py; the shell commands they would run are printed (``RUN: ...``), not run.
    EASEL_TEST_MISSING names packages to report as not installed."""
    import runpy

    import launch
    from modules import launch_utils

    missing = set(filter(None, os.environ.get("EASEL_TEST_MISSING", "").split(",")))
    installed = launch_utils.is_installed
    launch_utils.is_installed = launch.is_installed = lambda package: package not in missing and installed(package)
    launch_utils.run = lambda command, *args, **kwargs: print(f"RUN: {command}")
    for name in sorted(os.listdir(os.path.join(DATA, "extensions"))):
        script = os.path.join(DATA, "extensions", name, "install.py")
        if os.path.isfile(script):
            runpy.run_path(script, run_name="__main__")


def dump(demo) -> None:
    """What the tests check of a start-up, as one JSON line: the top tabs, the settings' sections, which
    files registered the extension callbacks, and where its modules came from."""
    import json

    from modules import infotext_utils, script_callbacks, shared

    extensions_dir = os.path.join(DATA, "extensions")
    print("DUMP " + json.dumps({
        # "Send to Easel": the buttons bound to its paste fields, and the infotext keys it takes
        "send_to_easel": sorted(binding.paste_button.elem_id for binding in infotext_utils.registered_param_bindings
                                if binding.tabname == "easel"),
        "easel_paste_fields": [key for _field, key in infotext_utils.paste_fields.get("easel", {}).get("fields", [])
                               if isinstance(key, str)],
        "tabs": [ifid for _interface, _label, ifid in getattr(demo, "easel_test_tabs", [])],
        "settings": {key: list(info.section) for key, info in shared.opts.data_labels.items()
                     if key.startswith("easel")},
        "callbacks": sorted({os.path.relpath(callback.script, extensions_dir)
                             for callbacks in script_callbacks.callback_map.values() for callback in callbacks
                             if callback.script.startswith(extensions_dir)}),
        "modules": {name: os.path.relpath(getattr(sys.modules[name], "__file__", "") or "", extensions_dir)
                    for name in ("easel_a1111", "easel_a1111.tab", "easel_shared")},
        "extension_on_sys_path": any(path.startswith(extensions_dir) for path in sys.path),
        # the Easel tab's fields as the page will be served (saved defaults applied)
        "easel_fields": {block.elem_id: {"visible": block.visible, "value": getattr(block, "value", None),
                                         "choices": [choice[-1] if isinstance(choice, (tuple, list)) else choice
                                                     for choice in getattr(block, "choices", None) or []],
                                         "interactive": getattr(block, "interactive", None)}
                         for block in demo.blocks.values()
                         if (getattr(block, "elem_id", None) or "").startswith("easel_")},
    }, default=str))


def main() -> None:
    os.chdir(SOURCE)  # the WebUI runs in its folder (and serves its page's scripts from there)
    install_stubs()
    if MODE == "--run-installer":
        run_installers()
        return
    from modules import shared  # noqa: F401 - the WebUI's first import
    initialize()
    importlib.import_module("modules.gradio_extensions" if FORGE else "modules.gradio_extensons")  # its gradio patches
    from modules import extensions, scripts

    extensions.list_extensions()
    scripts.load_scripts()
    scripts.scripts_postproc.initialize_scripts(scripts.postprocessing_scripts_data)
    demo = build()
    # as webui.py does: the "Send to" code only opens picture files this page's gradio made (ui_tempdir)
    sys.modules["modules.shared"].demo = demo
    if MODE == "--dump-ui":
        dump(demo)
    if MODE != "--serve":
        return

    demo.queue(64)  # as webui.py does (gradio 4 reads 64 as its status update rate)
    # what webui.py serves files from: the data folder (extensions) and, as its working folder, its own
    demo.launch(server_name="127.0.0.1", server_port=PORT, show_api=False, quiet=True,
                allowed_paths=shared.cmd_opts.gradio_allowed_path)

if __name__ == "__main__":
    main()
