"""LoRAs through the real server, on the demo model's tiny random LoRAs (kohya and diffusers files)."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from conftest import decode, picture, png, rect_mask
from shared.client import Accepted, EaselError
from shared.errors import ProtocolError
from shared.loras import merge, missing, split_prompt

LORAS = {"demo": ("demo-lora", "demo-lora-diffusers"), "demo-xl": ("demo-xl-lora", "demo-xl-lora-diffusers")}


def run(client, mode="generate", model="demo", **params):
    params = {"prompt": "a house", "steps": 4, "seed": 3, "model": model, **params}
    if mode == "generate":
        params.update(width=128, height=128)
    else:
        image = picture(128, 128)
        params.update(image=png(image), strength=0.8)
        if mode == "inpaint":
            params["mask"] = png(rect_mask(image.size, (30, 30, 100, 100)))
    return decode(client.run(mode, **params).images[0].image).astype(int)


@pytest.mark.parametrize("model", ["demo", "demo-xl"])
def test_weight_zero_is_no_lora_and_weight_one_changes_the_picture(client, model):
    lora = LORAS[model][0]
    plain = run(client, model=model)
    one = run(client, model=model, loras=[{"name": lora, "weight": 1}])
    half = run(client, model=model, loras=[{"name": lora, "weight": 0.5}])
    zero = run(client, model=model, loras=[{"name": lora, "weight": 0}])
    assert np.abs(one - plain).mean() > 5  # visibly: several levels of 255 on average
    assert 0 < np.abs(half - plain).mean() < np.abs(one - plain).mean()
    assert (zero == plain).all()
    assert (run(client, model=model) == plain).all(), "switched off again for a job without LoRAs"


def test_a_plain_job_after_a_lora_job_equals_one_on_a_fresh_server(client, demo_config):
    from backend.engine.engine import Engine
    from backend.engine.models import ModelRegistry, pick_device
    from backend.server import ServerThread
    from shared.client import Client

    run(client, loras=[{"name": "demo-lora", "weight": 1.5}, {"name": "demo-lora-diffusers", "weight": -1}])
    after = run(client, "img2img")
    fresh_engine = Engine(ModelRegistry(demo_config, *pick_device("cpu")))
    with ServerThread(demo_config, fresh_engine) as fresh, Client(fresh.url) as other:
        assert (run(other, "img2img") == after).all()


def test_two_loras_at_once_and_both_file_formats(client):
    kohya, diffusers = LORAS["demo"]
    plain = run(client)
    first = run(client, loras=[{"name": kohya}])
    second = run(client, loras=[{"name": diffusers}])
    both = run(client, loras=[{"name": kohya}, {"name": diffusers}])
    for single in (first, second):
        assert np.abs(single - plain).mean() > 5
        assert np.abs(both - single).mean() > 2
    assert (run(client, loras=[{"name": diffusers}, {"name": kohya}]) == both).all(), "order does not matter"


def test_a_prompt_tag_is_taken_out_and_the_field_wins_on_a_duplicate(client):
    field = run(client, loras=[{"name": "demo-lora", "weight": 0.7}])
    result = client.run("generate", prompt="a house <lora:demo-lora:0.7>", steps=4, seed=3, width=128, height=128)
    assert (decode(result.images[0].image) == field).all()
    assert result.parameters["prompt"] == "a house"
    assert result.parameters["loras"] == [{"name": "demo-lora", "weight": 0.7}]
    both = run(client, prompt="a house <lora:demo-lora:-1>", loras=[{"name": "demo-lora", "weight": 0.7}])
    assert (both == field).all()


@pytest.mark.parametrize("model", ["demo", "demo-xl"])  # 9-channel inpaint UNets: the LoRA loads there too
def test_loras_steer_inpainting_with_the_inpaint_unet(client, model):
    plain = run(client, "inpaint", model=model)
    styled = run(client, "inpaint", model=model, loras=[{"name": LORAS[model][1]}])
    assert np.abs(styled - plain).mean() > 0.5
    assert (run(client, "inpaint", model=model) == plain).all()


def test_loras_work_with_references_and_control(client):
    control_map = np.zeros((128, 128, 3), np.uint8)
    control_map[:, :64] = 255
    extras = {"references": [{"image": png(Image.new("RGB", (64, 64), "red"))}],
              "control": [{"type": "canny", "image": png(Image.fromarray(control_map))}]}
    plain = run(client, **extras)  # (generate: diffused at 128 px; img2img would scale up to 512)
    styled = run(client, loras=[{"name": "demo-lora"}], **extras)
    assert np.abs(styled - plain).mean() > 2
    assert (run(client, **extras) == plain).all()


def test_loras_are_listed_with_their_family(client):
    listed = {item["name"]: item["family"] for item in client.models()["loras"]}
    assert listed == {"demo-lora": "sd15", "demo-lora-diffusers": "sd15", "demo-xl-lora": "sdxl",
                      "demo-xl-lora-diffusers": "sdxl"}
    welcome = {item["name"]: item["family"] for item in client.welcome["capabilities"]["loras"]}
    assert welcome == listed


@pytest.mark.parametrize("params, code, field, words", [
    # what it has for the job's model: an SD 1.5 painter was offered the SDXL LoRAs too
    ({"loras": [{"name": "demo-lora"}, {"name": "nope"}]}, "unknown_lora", "loras[1].name",
     "no LoRA named 'nope'; this server has: for sd15 models, demo-lora, demo-lora-diffusers (and 2 for other "
     "families)"),
    ({"loras": [{"name": "demo-lora", "weight": 2.5}]}, "invalid_field", "loras[0].weight", "at most 2"),
    ({"loras": [{"name": "demo-xl-lora"}]}, "wrong_family", "loras[0].name",
     "for sdxl models, but model 'demo' is sd15: pick a model of the sdxl family for it, or one of the sd15 "
     "LoRAs: demo-lora"),
    ({"prompt": "a <lora:demo-xl-lora:0.5> house"}, "wrong_family", "prompt", "demo-xl-lora"),
    ({"prompt": "a <lora:nope> house"}, "unknown_lora", "prompt", "nope"),
    ({"prompt": "a <lora:demo-lora:lots> house"}, "invalid_field", "prompt", "not a number"),
    ({"prompt": "a <lora:demo-lora:3> house"}, "invalid_field", "prompt", "from -2 to 2"),
    ({"prompt": "a <lora:demo-lora:1:0.5> house"}, "invalid_field", "prompt", "separate UNet / text encoder weights"),
    ({"prompt": "a <lora:demo-lora:unet=1:te=0.5> house"}, "invalid_field", "prompt", "<lora:demo-lora:WEIGHT>"),
    ({"prompt": "a <lora:Demo-LoRA> house"}, "unknown_lora", "prompt", "did you mean 'demo-lora'?"),
    ({"prompt": "a <lora:demo-lora:0.5> house <lora:demo-lora:1>"}, "invalid_field", "prompt", "tagged twice"),
    ({"loras": [{"name": "demo-lora"}, {"name": "demo-lora", "weight": 0.5}]}, "invalid_field", "loras[1].name",
     "twice"),
])
def test_bad_loras_are_refused_before_accepted_naming_the_field(client, params, code, field, words):
    events = []
    with pytest.raises(EaselError) as caught:
        client.run("generate", **{"prompt": "a house", "steps": 2, "width": 64, "height": 64, **params},
                   on_event=events.append)
    assert (caught.value.code, caught.value.field) == (code, field)
    assert words in caught.value.message
    assert not any(isinstance(event, Accepted) for event in events)
    run(client)  # the connection keeps working


def test_prompt_tags_parse_in_pure_code():
    assert split_prompt("a cat <lora:ink:0.6>, red <LORA:paper>") == ("a cat, red", [("ink", 0.6), ("paper", 1.0)])
    assert split_prompt("no tags  here") == ("no tags  here", [])
    assert str(split_prompt("<lora:ink:-0>")[1][0][1]) == "0.0", "shown as 0 in result.parameters, not -0.0"
    with pytest.raises(ProtocolError) as caught:
        split_prompt("<lora::1>")
    assert caught.value.field == "prompt"
    merged = merge(("loras", [("ink", 0.2)]), ("prompt", [("ink", 0.9), ("paper", 1.0)]), ("preset", [("x", 1.0)]))
    assert merged == [("ink", 0.2, "loras[0].name"), ("paper", 1.0, "prompt"), ("x", 1.0, "preset")]
    # the name a user most likely meant: other capitals, ComfyUI's folder/file.safetensors, a model's subfolder
    for asked, offered, meant in (("Ink", {"ink", "paper"}, "ink"), ("styles/Ink.safetensors", {"ink"}, "ink"),
                                  ("SD1.5/v1-5.safetensors", {"SD1.5/v1-5", "v1-5"}, "SD1.5/v1-5"),
                                  ("juggernaut", {"SDXL/juggernaut", "v1-5"}, "SDXL/juggernaut")):
        assert f"did you mean {meant!r}?" in missing("LoRA", asked, dict.fromkeys(offered))
    assert "did you mean" not in missing("LoRA", "Ink", dict.fromkeys({"ink", "INK"}))


def test_a_loras_family_is_read_from_its_header():
    from backend.engine.loras import family_of

    assert family_of({}, {"ss_base_model_version": "sdxl_base_v1-0"}) == "sdxl"
    assert family_of({}, {"modelspec.architecture": "flux-1-dev/lora"}) == "flux"
    cross = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    assert family_of({cross: (8, 768)}) == "sd15"
    assert family_of({"unet." + cross.replace("lora_down", "lora_A")[10:]: (8, 2048)}) == "sdxl"
    assert family_of({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1280)}) == "sdxl"
    assert family_of({"lora_unet_mid_block_resnets_0_conv1.lora_down.weight": (4, 1280, 3, 3)}) is None


def test_easel_run_lora_option(server, tmp_path, capsys):
    from backend.cli import main

    picture(128, 128).save(tmp_path / "in.png")
    common = ["run", "img2img", "--prompt", "a house", "--image", str(tmp_path / "in.png"), "--strength", "0.8",
              "--steps", "4", "--seed", "1", "--server", server.url]
    outputs = {}
    for name, extra in (("plain", []), ("zero", ["--lora", "demo-lora:0"]), ("one", ["--lora", "demo-lora"]),
                        ("tag", ["--prompt", "a house <lora:demo-lora:1>"])):
        assert main(common + extra + ["--out", str(tmp_path / f"{name}.png")]) == 0, capsys.readouterr().err
        outputs[name] = np.asarray(Image.open(tmp_path / f"{name}.png")).astype(int)
    assert (outputs["zero"] == outputs["plain"]).all()
    assert np.abs(outputs["one"] - outputs["plain"]).mean() > 2 and (outputs["tag"] == outputs["one"]).all()
    capsys.readouterr()
    assert main(common + ["--lora", "demo-lora", "--lora", "demo-lora-diffusers:2.5", "--out",
                          str(tmp_path / "bad.png")]) == 2
    assert "the 2nd --lora (demo-lora-diffusers:2.5): WEIGHT must be at most 2" in capsys.readouterr().err
    assert main(common + ["--lora", "demo-xl-lora", "--out", str(tmp_path / "bad.png")]) == 1
    err = capsys.readouterr().err
    assert "--lora demo-xl-lora: LoRA 'demo-xl-lora' is for sdxl models" in err and "[wrong_family]" in err


@pytest.mark.parametrize("regional", [False, True])
def test_a_compiled_unet_runs_eager_only_in_jobs_with_loras(demo_config, engine, monkeypatch, caplog, regional):
    """PEFT sets the LoRA weights per job as Python floats, which torch.compile would bake into its graph (a
    recompile per slider value): a job with LoRAs runs the UNet (or, compiled regionally, its blocks) eager,
    saying so once. A job without runs the compiled code again (PEFT's off switch is a bool: the graph is
    the plain UNet's), with the pictures of the server before its first LoRA, however often jobs alternate:
    one recompile, for the LoRA layers the first LoRA wrapped the UNet's projections in. Sizes outside
    compile_sizes stay eager. ("eager" backend: dynamo's tracing and guards, no kernels to build.)"""
    from torch._dynamo.utils import counters

    from backend.engine import speed
    from test_compile import profiled
    from test_performance import engine_with, generate
    from test_performance import run as run_job

    monkeypatch.setattr(speed, "COMPILE_BACKEND", "eager")
    compiled = engine_with(demo_config, compile=True, compile_modules=["unet"], compile_sizes=[(64, 64)],
                           compile_regional=regional)
    job = dataclasses.replace(generate(size=64), model="demo")
    plain, compiled_calls = profiled(compiled, job)  # no LoRA loaded yet
    assert compiled_calls > 0
    frames = counters["frames"]["total"]
    styled = {}
    with caplog.at_level("WARNING", logger="backend.engine.speed"):
        for loras in ((("demo-lora", 1.0),), (), (("demo-lora", 0.5),), (),
                      (("demo-lora", 1.0), ("demo-lora-diffusers", 1.0)), (), (("demo-lora", 1.0),), ()):
            pixels, calls = profiled(compiled, dataclasses.replace(job, loras=loras))
            if loras:
                assert calls == 0, loras
                assert np.abs(pixels.astype(int) - plain).mean() > 1, loras
                np.testing.assert_array_equal(pixels, styled.setdefault(loras, pixels))
            else:
                assert calls == compiled_calls
                np.testing.assert_array_equal(pixels, plain)
    assert counters["frames"]["total"] - frames == 1
    assert len(styled) == 3 and caplog.text.count("its UNet runs eager") == 1
    assert "LoRAs are loaded into model demo: its UNet runs eager (uncompiled) in jobs with LoRAs" in caplog.text
    one = dataclasses.replace(job, loras=(("demo-lora", 1.0),))
    np.testing.assert_array_equal(styled[one.loras], run_job(engine, one))
    _, calls = profiled(compiled, dataclasses.replace(job, width=64, height=128))
    assert calls == 0 and counters["frames"]["total"] - frames == 1


def test_loras_on_a_compiled_unet_with_control_and_references(demo_config, monkeypatch):
    """With a ControlNet and an IP-Adapter reference: a LoRA job runs only the UNet eager (the ControlNet stays
    compiled), and the LoRA-free job after it runs both compiled again, with the pictures from before the LoRA
    (one recompile of the UNet's graph, as without them)."""
    from torch._dynamo.utils import counters

    from backend.engine import speed
    from backend.engine.job import Control, Reference
    from test_compile import profiled
    from test_performance import engine_with, generate

    monkeypatch.setattr(speed, "COMPILE_BACKEND", "eager")
    compiled = engine_with(demo_config, compile=True, compile_modules=["unet", "controlnet"],
                           compile_sizes=[(64, 64)])
    edges = np.zeros((64, 64, 4), np.uint8)
    edges[:, 32:] = 255
    job = dataclasses.replace(generate(size=64), model="demo", control=[Control("canny", edges, None, 1.0, 0.0, 1.0)],
                              references=[Reference(np.full((96, 96, 4), 180, np.uint8), 1.0, "reference")])
    plain, calls = profiled(compiled, job)
    assert calls == 4  # the ControlNet and the UNet at each of the 2 steps
    frames = counters["frames"]["total"]
    styled, calls = profiled(compiled, dataclasses.replace(job, loras=(("demo-lora", 1.0),)))
    assert calls == 2 and np.abs(styled.astype(int) - plain).mean() > 1
    again, calls = profiled(compiled, job)
    assert calls == 4 and counters["frames"]["total"] - frames == 1
    np.testing.assert_array_equal(again, plain)


def test_loras_with_the_idle_unet_parked(demo_config, engine):
    """With parking, the UNet a job does not use waits in host memory, LoRA layers included."""
    import dataclasses

    from backend.engine.job import EditJob
    from test_performance import engine_with
    from test_performance import run as run_job

    parking = engine_with(demo_config, park_idle_unet=True)
    image = np.asarray(picture(64, 64).convert("RGBA"))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    base = EditJob(mode="img2img", model="demo", prompt="a door", negative_prompt="", seed=2, steps=2, guidance=5.0,
                   strength=0.5, batch=1, sampler="euler", image=image, loras=(("demo-lora", 1.0),))
    inpaint = dataclasses.replace(base, mode="inpaint", mask=mask)  # (img2img and inpaint diffuse at 512)
    first = run_job(parking, inpaint)  # the LoRA loads into the inpaint UNet ...
    np.testing.assert_array_equal(run_job(parking, base), run_job(engine, base))  # ... and the base one
    assert parking.speed.residency.is_parked(parking.registry.get("demo").inpaint_unet)
    np.testing.assert_array_equal(run_job(parking, inpaint), first)  # back from RAM with its LoRA layers
    assert parking.speed.residency.is_parked(parking.registry.get("demo").base.unet)


def test_a_lora_file_name_with_dots_and_the_prompt_cache(demo_config):
    """A1111 LoRA names often hold dots (PEFT's adapter keys cannot); the prompt cache keys on the text
    encoders' active LoRAs (a cached no-LoRA embedding must not serve a LoRA job)."""
    import dataclasses

    from backend.engine.engine import Engine
    from backend.engine.job import EditJob
    from backend.engine.models import ModelRegistry, pick_device
    from test_performance import run as run_job

    loras = {**demo_config.loras, "detail_v1.5": demo_config.loras["demo-lora"]}
    config = dataclasses.replace(demo_config, loras=loras)
    cached = Engine(ModelRegistry(config, *pick_device("cpu")))
    uncached = Engine(ModelRegistry(dataclasses.replace(config, performance=dataclasses.replace(
        config.performance, prompt_cache=0)), *pick_device("cpu")))
    job = EditJob(mode="generate", model="demo", prompt="a door", negative_prompt="", seed=2, steps=2, guidance=5.0,
                  strength=1.0, batch=1, sampler="euler", width=64, height=64)
    run_job(cached, job)  # caches the prompt's no-LoRA embeddings
    dotted = run_job(cached, dataclasses.replace(job, loras=(("detail_v1.5", 1.0),)))
    np.testing.assert_array_equal(dotted, run_job(uncached, dataclasses.replace(job, loras=(("demo-lora", 1.0),))))


@pytest.mark.parametrize("name", ["demo-xl-lora", "demo-xl-lora-diffusers", "demo-lora", "demo-lora-diffusers"])
def test_every_layer_of_a_lora_file_loads(engine, name):
    """Kohya files (SDXL's under the original SGM block names) and diffusers files alike: every attention
    projection of the UNet and the text encoders gets the LoRA."""
    model = engine.registry.get("demo-xl" if "xl" in name else "demo")
    pipe = model.pipeline("generate")
    engine.loras.apply(model, pipe, ((name, 1.0),))
    adapter = engine.loras.adapter(name)
    for part in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, part, None)
        if module is not None:
            wrapped = [path for path, layer in module.named_modules() if adapter in getattr(layer, "lora_A", {})]
            assert len(wrapped) == (32 if part == "unet" else 16), part  # 4 projections x attention layers
    engine.loras.apply(model, pipe, ())


def test_hosts_read_the_loras_and_presets_a_server_offers(client):
    from shared.capabilities import offer

    offered = offer(client.welcome["capabilities"])
    assert offered.loras_for("sdxl") == ("demo-xl-lora", "demo-xl-lora-diffusers")
    assert offered.loras_for("sd15") == ("demo-lora", "demo-lora-diffusers")
    assert {"lcm", "tcd", "lightning"} <= set(offered.presets)
    assert offer(None).loras == () and offer(None).presets == ()
    mixed = dataclasses.replace(offered, loras=(("style", None), ("flux-style", "flux"), ("demo-lora", "sd15")))
    assert mixed.loras_for("flux") == (), "the server refuses LoRAs on flux: a host must not offer them"
    assert mixed.loras_for("sd15") == ("style", "demo-lora")


def test_fused_qkv_projections_are_turned_off_for_a_lora(demo_config, engine, caplog):
    """Fused attention reads one concatenated QKV matrix and would silently skip a LoRA's to_q / to_k / to_v."""
    import dataclasses

    from backend.engine.engine import Engine
    from backend.engine.models import ModelRegistry, pick_device
    from test_performance import generate
    from test_performance import run as run_job

    fused = Engine(ModelRegistry(demo_config, *pick_device("cpu")))
    unet = fused.registry.get("demo").base.unet
    unet.fuse_qkv_projections()
    job = dataclasses.replace(generate(size=64), model="demo", loras=(("demo-lora", 1.0),))
    with caplog.at_level("WARNING", logger="backend.engine.speed"):
        styled = run_job(fused, job)
    assert "fused QKV projections are turned off" in caplog.text
    assert not any("Fused" in type(p).__name__ for p in unet.attn_processors.values())
    np.testing.assert_array_equal(styled, run_job(engine, job))


def test_an_a1111_lora_folder_as_users_have_it(tmp_path, demo_root, caplog):
    """models/Lora holds more than LoRAs: an embedding or a checkpoint saved to the wrong folder, a LyCORIS
    LoHa, a download cut short, the same name in two subfolders. Only LoRAs are offered; a job naming
    one of the others is told why before `accepted` (an embedding ran as if no LoRA had been asked)."""
    import torch
    from safetensors.torch import save_file

    from backend.config import ConfigError, load_config
    from backend.engine.engine import Engine
    from backend.engine.models import ModelRegistry
    from backend.server import ServerThread
    from shared.client import Client

    folder, elsewhere = tmp_path / "Lora", tmp_path / "shared-loras"
    (folder / "styles").mkdir(parents=True)
    elsewhere.mkdir()
    lora = (demo_root / "loras" / "demo-lora.safetensors").read_bytes()
    (folder / "Ink Style (v1.5).SafeTensors").write_bytes(lora)
    (folder / "styles" / "Ink Style (v1.5).safetensors").write_bytes(lora)  # same name: the first is used
    (elsewhere / "paper.safetensors").write_bytes(lora)
    (folder / "linked").symlink_to(elsewhere)
    (folder / "easynegative.safetensors").write_bytes((demo_root / "embeddings" / "demo-embedding.safetensors")
                                                      .read_bytes())
    (folder / "half.safetensors").write_bytes(lora[:len(lora) // 2])
    (folder / "old-style.pt").write_bytes(b"pickle")
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": torch.zeros(4, 2),
               "lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_b": torch.zeros(2, 4)},
              str(folder / "loha.safetensors"))
    (tmp_path / "easel.toml").write_text(f'[server]\nport = 0\nlora_folders = ["{folder}"]\n'
                                         f'[models.demo]\nsource = "{demo_root / "sd15"}"\n')
    with caplog.at_level("WARNING", logger="backend.config"):
        config = load_config(tmp_path / "easel.toml").check()
    assert sorted(config.loras) == ["Ink Style (v1.5)", "paper"]
    assert config.loras["Ink Style (v1.5)"] == str(folder / "Ink Style (v1.5).SafeTensors")
    assert "has the same name as" in caplog.text and "1 .pt / .ckpt file(s) left out (old-style.pt)" in caplog.text
    why = config.skipped_loras
    assert "embedding_folders" in why["easynegative"] and "cut short" in why["half"] and "LoHa" in why["loha"]
    with ServerThread(config, Engine(ModelRegistry(config, torch.device("cpu"), torch.float32))) as server, \
            Client(server.url) as client:
        listed = {lora["name"]: lora["family"] for lora in client.models()["loras"]}
        assert listed == {"Ink Style (v1.5)": "sd15", "paper": "sd15"}
        for name, words in (("easynegative", "textual-inversion embedding"), ("loha", "LyCORIS")):
            events = []
            with pytest.raises(EaselError) as caught:
                client.run("generate", prompt=f"a house <lora:{name}:1>", steps=1, width=64, height=64,
                           on_event=events.append)
            assert (caught.value.code, caught.value.field) == ("unknown_lora", "prompt") and words in str(caught.value)
            assert not any(isinstance(event, Accepted) for event in events)
        result = client.run("generate", prompt="a house <lora:Ink Style (v1.5):0.5>", steps=1, width=64, height=64)
        assert result.parameters["loras"] == [{"name": "Ink Style (v1.5)", "weight": 0.5}]
    for entry, words in ((demo_root / "embeddings" / "demo-embedding.safetensors", "textual-inversion embedding"),
                         (tmp_path / "nowhere.safetensors", "does not exist")):
        (tmp_path / "easel.toml").write_text(f'[loras]\nmine = "{entry}"\n')
        with pytest.raises(ConfigError, match=words):
            load_config(tmp_path / "easel.toml")


def test_a_lora_file_saved_again_while_serving_is_loaded_again(demo_config, tmp_path):
    """A painter retrains a LoRA, or downloads its new version over the old file: the next job uses the
    new weights (the loaded layers held a copy of the old ones, used on without a word)."""
    import dataclasses
    import os

    from safetensors.torch import load_file, save_file

    from backend.engine.engine import Engine
    from backend.engine.job import EditJob
    from backend.engine.models import ModelRegistry, pick_device
    from test_performance import run as run_job

    first = load_file(demo_config.loras["demo-lora"])
    second = {key: value * 3 if "lora_up" in key else value for key, value in first.items()}
    mine, fixed = tmp_path / "mine.safetensors", tmp_path / "second.safetensors"
    save_file(first, str(mine))
    save_file(second, str(fixed))
    config = dataclasses.replace(demo_config, loras={"mine": str(mine), "second": str(fixed),
                                                     "demo-lora": demo_config.loras["demo-lora"]})
    engine = Engine(ModelRegistry(config, *pick_device("cpu")))
    job = EditJob(mode="generate", model="demo", prompt="a door", negative_prompt="", seed=2, steps=2, guidance=5.0,
                  strength=1.0, batch=1, sampler="euler", width=64, height=64)
    plain = run_job(engine, job)
    before = run_job(engine, dataclasses.replace(job, loras=(("mine", 1.0), ("demo-lora", 0.5))))
    save_file(second, str(mine))
    os.utime(mine, ns=(os.stat(mine).st_mtime_ns + 10**9,) * 2)  # a new time even where the clock is coarse
    after = run_job(engine, dataclasses.replace(job, loras=(("mine", 1.0), ("demo-lora", 0.5))))
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, run_job(engine, dataclasses.replace(job, loras=(("second", 1.0),
                                                                                        ("demo-lora", 0.5)))))
    np.testing.assert_array_equal(plain, run_job(engine, job))
    unet = engine.registry.get("demo").base.unet
    assert sum(name.startswith("mine_") for name in unet.peft_config) == 1, "the old layers are gone"
