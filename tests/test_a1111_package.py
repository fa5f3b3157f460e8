"""``easel package a1111``: a self-contained extension folder that the WebUI can load when copied
into ``extensions/``, and its ``install.py`` run through the WebUI's installer helpers."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest

from backend.cli import main
from webui_env import A1111, FORGE, run_webui, webui_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    assert main(["package", "a1111", "--out", str(out)]) == 0
    return out / "easel"


def test_package_bundles_the_protocol_as_easel_shared(packaged):
    assert (packaged / "install.py").is_file() and (packaged / "scripts" / "easel_tab.py").is_file()
    bundled = packaged / "easel_shared"
    sources = sorted(path.name for path in (REPO / "shared").glob("*.py"))
    assert sorted(path.name for path in bundled.glob("*.py")) == sources
    assert all(filecmp.cmp(REPO / "shared" / name, bundled / name, shallow=False) for name in sources)
    assert not list(packaged.rglob("__pycache__"))


@pytest.mark.parametrize("webui", [A1111, FORGE])
def test_the_webuis_script_loader_mounts_it_with_settings_and_a_saved_default_for_every_field(webui, tmp_path):
    # The real WebUI start-up: extension listing, script loader, callbacks, settings, the page with the
    # saved UI defaults. No backend runs: the tab offers the protocol's whole vocabulary.
    root = webui_folder(tmp_path / "webui", settings={"easel_url": "ws://127.0.0.1:9/"})
    run = run_webui(webui, root, "--dump-ui")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "easel" not in run.stderr.lower(), "the extension reported an error while loading"
    facts = json.loads(run.stdout.split("DUMP ", 1)[1].splitlines()[0])
    assert facts["tabs"] == ["txt2img", "img2img", "extras", "pnginfo", "easel", "settings"]
    assert facts["settings"] == {"easel_url": ["easel", "Easel"], "easel_token": ["easel", "Easel"],
                                 "easel_cert": ["easel", "Easel"]}
    assert facts["send_to_easel"] == ["easel_tab", "img2img_send_to_easel", "txt2img_send_to_easel"]  # + PNG Info's
    # (CFG scale is pasted by a function: only an Easel result's, another model's 7 leaves it on auto)
    assert facts["easel_paste_fields"] == ["Prompt", "Negative prompt", "Steps", "Seed", "Size-1",
                                           "Size-2", "Denoising strength", "Image CFG scale",
                                           "Postprocess upscale by", "Easel mask grow", "Mask blur",
                                           "Easel soft inpainting"]
    # Registered from the script the WebUI loaded (its callback names and error reports say so) ...
    assert facts["callbacks"] == ["easel/scripts/easel_tab.py"]
    # ... and the package found after the loader took the extension off sys.path (A1111 does; Forge
    # leaves it there): the copy's own, with the bundled protocol.
    assert facts["extension_on_sys_path"] == (webui == FORGE)
    assert facts["modules"] == {"easel_a1111": "easel/easel_a1111/__init__.py",
                                "easel_a1111.tab": "easel/easel_a1111/tab.py",
                                "easel_shared": "easel/easel_shared/__init__.py"}
    saved = json.loads((root / "ui-config.json").read_text())
    values = [key for key in saved if key.startswith("easel/") and key.endswith("/value")]
    # Each unit's and reference's fields have keys of their own (they shared "Enable", "Scale" ... before).
    for number in (1, 2, 3):
        for field in (f"Enable unit {number}", f"Unit {number} type", f"Unit {number} scale", f"Unit {number} start",
                      f"Unit {number} end"):
            assert f"easel/{field}/value" in values, field
    for number in (1, 2):
        assert f"easel/Reference {number} weight/value" in values and f"easel/Reference {number} takes/value" in values
    assert saved["easel/Model/value"] == "Server default" and saved["easel/Sampling method/value"] == "DPM++ 2M Karras"
    assert saved["easel/Mode/value"] == "inpaint"
    assert "easel/Parameters used/value" not in saved  # an output: the last job's text is no default
    assert not [key for key in values if "LoRA" in key]  # a picker that adds to the prompt, no setting


BROWSER = """import gradio as gr
from modules import infotext_utils, script_callbacks


def tab():
    with gr.Blocks(analytics_enabled=False) as ui:
        infotext_utils.create_buttons(["txt2img", "img2img", "inpaint", "extras"])
    return [(ui, "Browser", "browser")]


script_callbacks.on_ui_tabs(tab)
"""


def test_another_extensions_send_to_row_gets_no_send_to_easel_button(tmp_path):
    # An image browser extension makes a "Send to" row of its own with create_buttons (its tab built after
    # PNG Info): a "Send to Easel" there would be bound to PNG Info's text and picture.
    root = webui_folder(tmp_path / "webui", settings={"easel_url": "ws://127.0.0.1:9/"})
    (root / "extensions" / "browser" / "scripts").mkdir(parents=True)
    (root / "extensions" / "browser" / "scripts" / "browser.py").write_text(BROWSER)
    run = run_webui(A1111, root, "--dump-ui")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    facts = json.loads(run.stdout.split("DUMP ", 1)[1].splitlines()[0])
    assert "browser" in facts["tabs"]
    assert facts["send_to_easel"] == ["easel_tab", "img2img_send_to_easel", "txt2img_send_to_easel"]


@pytest.mark.parametrize("webui", [A1111, FORGE])
def test_a_saved_default_model_starts_the_page_with_what_that_model_offers(webui, server, tmp_path):
    # Settings > Defaults saved an instruct-only model (and Mode "inpaint", which it cannot do): the page
    # must open on that model's modes, without the ControlNet units and references it cannot take. Its label
    # is an earlier offer's (before the picker named what each model can do): the WebUI dropped it.
    root = webui_folder(tmp_path / "webui", settings={"easel_url": server.url}, ui_defaults={
        "easel/Model/value": "demo-instruct (SD 1.5, 512 px)", "easel/Mode/value": "inpaint"})
    run = run_webui(webui, root, "--dump-ui")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    fields = json.loads(run.stdout.split("DUMP ", 1)[1].splitlines()[0])["easel_fields"]
    assert fields["easel_model"]["value"] == "demo-instruct (SD 1.5, 512 px: instruct only)"
    assert fields["easel_mode"]["choices"] == ["upscale", "instruct"] and fields["easel_mode"]["value"] == "instruct"
    assert not any(fields[f"easel_cn{n}"]["visible"] for n in (1, 2, 3))
    assert not any(fields[f"easel_ref{n}"]["visible"] for n in (1, 2))
    assert fields["easel_image_guidance"]["visible"]


@pytest.mark.parametrize("webui, bound", [(A1111, "<12"), (FORGE, "<13")])
def test_install_py_through_the_webuis_launch_helpers(packaged, tmp_path, webui, bound):
    root = webui_folder(tmp_path / "webui")
    run = run_webui(webui, root, "--run-installer")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "RUN:" not in run.stdout  # websockets is there: nothing to install
    run = run_webui(webui, root, "--run-installer", env={"EASEL_TEST_MISSING": "websockets"})
    assert run.returncode == 0, run.stderr[-3000:]
    commands = [line for line in run.stdout.splitlines() if line.startswith("RUN:")]
    # gradio 3's client breaks on websockets 12, gradio 4's (Forge) on 13
    assert len(commands) == 1 and commands[0].endswith(f'-m pip install "websockets>=11,{bound}" --prefer-binary'), \
        commands
