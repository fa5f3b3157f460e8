"""Presets through the real server: built-in few-step ones (LCM, TCD, Lightning) and configured ones."""

import dataclasses
import textwrap

import numpy as np
import pytest

from conftest import decode, picture, png
from shared.client import Accepted, Client, EaselError, Started

INK = {"model": "demo-xl", "steps": 3, "guidance": 5.0, "sampler": "euler", "prompt": "{prompt}, ink drawing",
       "negative_prompt": "blurry", "loras": ["demo-xl-lora:0.5"]}


@pytest.fixture(scope="module")
def styled(demo_config, engine):
    """A server (on the session's engine) whose config adds the preset ``ink``."""
    from backend.presets import parse_presets
    from backend.server import ServerThread

    config = dataclasses.replace(demo_config, presets=parse_presets({"ink": INK}))
    with ServerThread(config.check(), engine) as running, Client(running.url) as client:
        yield client


def pixels(result):
    return decode(result.images[0].image).astype(int)


def test_a_few_step_preset_runs_one_step_where_steps_x_strength_is_below_one(client):
    image = png(picture(128, 128))
    events = []
    result = client.run("img2img", preset="lcm", prompt="a house", image=image, strength=0.2, seed=1,
                        on_event=events.append)
    assert [event.steps for event in events if isinstance(event, Started)] == [1]
    params = result.parameters
    assert (params["sampler"], params["steps"], params["guidance"], params["preset"]) == ("lcm", 4, 1.5, "lcm")
    assert np.abs(pixels(result) - np.asarray(picture(128, 128).convert("RGBA"))).mean() > 0.5
    with pytest.raises(EaselError) as caught:  # the same settings without the preset: no step to run
        client.run("img2img", sampler="lcm", steps=4, guidance=1.5, prompt="a house", image=image, strength=0.2)
    assert (caught.value.code, caught.value.field) == ("too_few_steps", "strength")


def test_builtin_presets_run_their_schedulers(client):
    made = {}
    for preset in ("lcm", "tcd", "lightning"):
        result = client.run("generate", preset=preset, prompt="a house", width=64, height=64, seed=2)
        assert result.parameters["steps"] == 4
        made[preset] = pixels(result)
    assert not (made["lcm"] == made["tcd"]).all() and not (made["tcd"] == made["lightning"]).all()


def test_fields_the_job_sets_win_over_the_preset(client):
    result = client.run("generate", preset="lcm", steps=6, guidance=3.0, prompt="a house", width=64, height=64)
    assert (result.parameters["steps"], result.parameters["guidance"], result.parameters["sampler"]) == (6, 3.0, "lcm")


def test_a_field_the_job_sets_wins_even_at_its_default_value(client):
    # The client dropped a preset's fields that held their default value: `easel run --preset lcm --steps 20
    # --sampler dpmpp_2m_karras` ran LCM at 4 steps, though "the options you give win".
    result = client.run("generate", preset="lcm", steps=20, sampler="dpmpp_2m_karras", prompt="a house", width=64,
                        height=64, seed=1)
    assert (result.parameters["steps"], result.parameters["sampler"]) == (20, "dpmpp_2m_karras")
    assert result.parameters["guidance"] == 1.5, "what the job leaves out is the preset's"


def test_a_configured_preset_is_its_settings_written_out(styled):
    common = {"prompt": "a house", "seed": 4, "width": 128, "height": 128}
    by_preset = styled.run("generate", preset="ink", **common)
    written_out = styled.run("generate", model="demo-xl", steps=3, guidance=5.0, sampler="euler",
                             negative_prompt="blurry", loras=[{"name": "demo-xl-lora", "weight": 0.5}],
                             **dict(common, prompt="a house, ink drawing"))
    assert (pixels(by_preset) == pixels(written_out)).all()
    assert (by_preset.parameters["prompt"], by_preset.parameters["encoded_prompt"]) == ("a house",
                                                                                        "a house, ink drawing")
    # the job's own LoRA weight wins: 0 switches the preset's LoRA off
    no_lora = styled.run("generate", preset="ink", loras=[{"name": "demo-xl-lora", "weight": 0}], **common)
    plain = styled.run("generate", model="demo-xl", steps=3, guidance=5.0, sampler="euler", negative_prompt="blurry",
                       **dict(common, prompt="a house, ink drawing"))
    assert (pixels(no_lora) == pixels(plain)).all() and not (pixels(no_lora) == pixels(by_preset)).all()


def test_presets_are_listed(styled):
    listed = {item["name"]: item for item in styled.models()["presets"]}
    assert {"lcm", "tcd", "lightning", "ink"} <= set(listed)
    assert listed["ink"]["loras"] == [{"name": "demo-xl-lora", "weight": 0.5}]
    assert listed["lightning"]["few_step"] and listed["lightning"]["timestep_spacing"] == "trailing"
    assert {item["name"] for item in styled.welcome["capabilities"]["presets"]} == set(listed)


def test_an_unknown_preset_is_refused_before_accepted(client):
    events = []
    with pytest.raises(EaselError) as caught:
        client.run("generate", preset="nope", prompt="a house", width=64, height=64, on_event=events.append)
    assert (caught.value.code, caught.value.field) == ("unknown_preset", "preset")
    assert "lcm" in caught.value.message and not any(isinstance(event, Accepted) for event in events)
    with pytest.raises(EaselError, match=r"no preset named 'LCM' \(did you mean 'lcm'\? names are case-sensitive\)"):
        client.run("generate", preset="LCM", prompt="a house", width=64, height=64)


def test_presets_and_loras_from_the_config_file(tmp_path, demo_root):
    from backend.config import ConfigError, load_config

    folder = tmp_path / "Lora"
    (folder / "styles").mkdir(parents=True)
    (folder / "styles" / "ink.safetensors").write_bytes((demo_root / "loras" / "demo-lora.safetensors").read_bytes())
    toml = tmp_path / "easel.toml"
    toml.write_text(textwrap.dedent(f"""
        [server]
        lora_folders = ["Lora"]
        [loras]
        mine = "{demo_root / 'loras' / 'demo-lora-diffusers.safetensors'}"
        [presets.quick]
        steps = 6
        loras = ["ink:0.5", {{name = "mine", weight = -1}}]
        prompt = "{{prompt}}, quick sketch"
    """))
    config = load_config(toml).check()
    assert config.loras["ink"] == str(folder / "styles" / "ink.safetensors")
    assert config.presets["quick"].loras == (("ink", 0.5), ("mine", -1.0))
    assert "lcm" in config.presets
    for bad, words in (('[presets.x]\nstep = 4', "presets.x.step is not a preset setting"),
                       ('[presets.x]\nsteps = 0', "presets.x.steps must be at least 1"),
                       ('[presets.x]\nprompt = "no slot"', "presets.x.prompt"),
                       ('[presets.x]\nloras = ["ink:3"]', "presets.x.loras[0]"),
                       ('[loras]\nx = "model.ckpt"', "loras.x")):
        toml.write_text(bad)
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            load_config(toml)
