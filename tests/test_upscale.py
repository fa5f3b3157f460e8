"""Upscale: super-resolution models through spandrel (configured, or found in A1111 / ComfyUI folders), the
`upscale` mode with its optional refine in tiles, the demo upscalers, bad input, and `easel run upscale`."""

import base64
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from websockets.sync.client import connect

from backend.config import ConfigError, load_config
from backend.engine.upscalers import Upscalers, scale_from_name, upscale_tiled
from backend.fixtures.demo_model import DEMO_UPSCALERS, demo_upscalers
from conftest import decode, picture, png
from schema_check import validator
from shared.client import Accepted, Cancelled, EaselError, Progress, Started
from shared.messages import PROTOCOL_VERSION


def events_of(client, **params):
    seen = []
    result = client.run("upscale", image=png(params.pop("image", picture(160, 128))), on_event=seen.append, **params)
    return result, seen


def refused(client, **params):
    seen = []
    with pytest.raises(EaselError) as error:
        client.run("upscale", image=png(params.pop("image", picture(160, 128))), on_event=seen.append, **params)
    assert not any(isinstance(event, Accepted) for event in seen), "refused before `accepted`"
    return error.value


# -- configuration ------------------------------------------------------------------------------

def test_upscaler_folders_of_a1111_and_comfyui_are_read_by_file_name(tmp_path, demo_root):
    esrgan, comfy = tmp_path / "webui" / "models" / "ESRGAN", tmp_path / "ComfyUI" / "models" / "upscale_models"
    esrgan.mkdir(parents=True)
    comfy.mkdir(parents=True)
    sources = demo_upscalers(demo_root)
    save_file(torch.load(sources["4x-demo-compact"]), str(esrgan / "4x-UltraSharp.safetensors"))
    (comfy / "RealESRGAN_x2plus.pth").write_bytes(open(sources["2x-demo-esrgan"], "rb").read())
    (comfy / "notes.txt").write_text("not a model")
    (tmp_path / "easel.toml").write_text(
        f'[server]\nupscaler_folders = ["{esrgan}", "{comfy}"]\ndefault_upscaler = "mine"\n'
        f'[upscalers]\nmine = "{sources["4x-demo-compact"]}"\n')
    config = load_config(tmp_path / "easel.toml").check()
    assert config.upscalers == {"mine": sources["4x-demo-compact"],
                                "4x-UltraSharp": str(esrgan / "4x-UltraSharp.safetensors"),
                                "RealESRGAN_x2plus": str(comfy / "RealESRGAN_x2plus.pth")}
    upscalers = Upscalers(config.upscalers, torch.device("cpu"), torch.float32, config.default_upscaler)
    assert upscalers.names() == ["lanczos", "mine", "4x-UltraSharp", "RealESRGAN_x2plus"]
    assert upscalers.load(None) is upscalers.load("mine"), "the default, loaded once"
    assert upscalers.load("RealESRGAN_x2plus").scale == 2, ".pth read (tensors only)"
    described = {d.name: (d.scale, d.architecture, d.loaded) for d in upscalers.describe()}
    assert described["4x-UltraSharp"] == (4, None, False), "the scale a file name states, before loading"
    assert described["RealESRGAN_x2plus"] == (2, "ESRGAN", True)


def test_an_upscale_pipeline_is_configured_like_a_model(tmp_path):
    (tmp_path / "x4").mkdir()
    (tmp_path / "easel.toml").write_text('[upscalers]\nhub = "stabilityai/stable-diffusion-x4-upscaler"\n'
                                         'local = "x4"\n')
    config = load_config(tmp_path / "easel.toml")
    assert config.upscalers == {"hub": "stabilityai/stable-diffusion-x4-upscaler", "local": str(tmp_path / "x4")}


@pytest.mark.parametrize("entry, said", [('x = "/models/net.ckpt"', "upscalers.x"),
                                         ('x = "/models/x.pth"\n[server]\ndefault_upscaler = "y"', "default_upscaler")])
def test_bad_upscaler_settings_name_the_key(tmp_path, entry, said):
    (tmp_path / "easel.toml").write_text(f"[upscalers]\n{entry}\n")
    with pytest.raises(ConfigError, match=said):
        load_config(tmp_path / "easel.toml").check()


def test_scale_from_file_names():
    assert [scale_from_name(n) for n in ("4x-UltraSharp", "RealESRGAN_x2plus", "4xNomos8kSCHAT-L", "x4",
                                         "003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN", "ultramix")] == \
        [4, 2, 4, 4, 4, None]


# -- the upscaler on its own --------------------------------------------------------------------

@pytest.fixture(scope="module")
def compact(demo_root):
    return Upscalers(demo_upscalers(demo_root), torch.device("cpu"), torch.float32).load("4x-demo-compact")


def test_tiles_give_what_one_call_gives(compact):
    rgb = np.array(picture(150, 100))
    whole = (compact(torch.from_numpy(rgb).permute(2, 0, 1)[None] / 255.0).clamp(0, 1)[0].permute(1, 2, 0).numpy()
             * 255).round()
    tiled = upscale_tiled(compact, rgb, tile=64, overlap=16)
    assert tiled.shape == (400, 600, 3)
    assert np.abs(tiled - whole).max() <= 2, "overlap covers the network's reach: no seams"


def test_a_model_is_applied_again_and_resampled_to_the_exact_size(demo_root):
    upscalers = Upscalers(demo_upscalers(demo_root), torch.device("cpu"), torch.float32)
    model = upscalers.load("2x-demo-esrgan")
    ticks = []
    out = upscalers.run(model, np.asarray(picture(48, 44)), (130, 119), lambda done, total: ticks.append((done, total)))
    assert out.shape == (119, 130, 3)
    assert ticks == [(1, 2), (2, 2)], "2x twice reaches 2.7x; progress counts both rounds' tiles, never backwards"


def test_a_smaller_target_than_the_model_makes_is_reached_tile_by_tile(compact):
    """A 4x model asked for 1.25x (the Krita Upscale of a 6000 x 4000 document can go no further under
    max_side) resamples each tile to the target: the picture is the full 4x output resampled, without
    ever holding that output (it took 18 GB for 6000 x 4000)."""
    import tracemalloc

    rgb = np.asarray(picture(600, 400))
    full = upscale_tiled(compact, rgb)  # the whole 2400 x 1600 output, then resampled as before
    expected = np.asarray(Image.fromarray(full).resize((750, 500), Image.Resampling.LANCZOS)).astype(int)
    ticks = []
    tracemalloc.start()
    try:
        out = Upscalers({}, torch.device("cpu"), torch.float32).run(compact, rgb, (750, 500),
                                                                    lambda done, total: ticks.append((done, total)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (500, 750, 3) and ticks == [(1, 2), (2, 2)]
    # (single pixels differ at hard edges: the old path rounded to 8 bits before resampling)
    columns = np.abs(out - expected).mean(axis=(0, 2))
    assert columns.max() < 1, "no column, where the tiles meet (110, 640) or elsewhere, differs by a level"
    # the old blend held the 4x output as float32 plus its weights: 5 x its 8-bit size, and more in temporaries
    assert peak < 2 * full.nbytes, "the 4x output is never held, only one tile's"


# -- through the server -------------------------------------------------------------------------

def test_welcome_and_models_list_the_upscalers(client):
    assert client.welcome["capabilities"]["upscalers"] == ["lanczos", *DEMO_UPSCALERS, "demo-sd-x4"]
    listed = {u["name"]: u["scale"] for u in client.models()["upscalers"]}
    assert listed == {"lanczos": None, "4x-demo-compact": 4, "2x-demo-esrgan": 2, "demo-sd-x4": 4}


def test_upscale_makes_the_picture_larger_and_like_itself(client):
    small = picture(160, 128)
    result, seen = events_of(client, image=small, scale=2.5, upscaler="4x-demo-compact")
    started = next(event for event in seen if isinstance(event, Started))
    assert started.steps == 0 and started.passes == [((0, 0, 400, 320), (400, 320))]
    item, = result.images
    big = decode(item.image)
    assert big.shape == (320, 400, 4) and tuple(item.offset) == (0, 0) and (big[..., 3] == 255).all()
    back = np.asarray(Image.fromarray(big[..., :3]).resize(small.size, Image.Resampling.BOX), np.int16)
    assert np.abs(back - np.asarray(small, np.int16)).mean() < 8, "the same picture, larger"
    assert result.parameters["upscaler"] == "4x-demo-compact" and result.parameters["scale"] == 2.5
    assert result.parameters["refine"] == 0


def test_a_tiny_pictures_upscale_is_valid_traffic(server):
    # Without refine no model runs and `started` names the target as the diffusion size, 6 x 4 here: the
    # schema held every diffusion size to 8 or more, so a client checking the server's messages refused it.
    tiny = base64.b64encode(png(Image.new("RGB", (3, 2), (200, 120, 40))).data).decode()
    server_message = validator("server_message")
    with connect(server.url, max_size=None) as ws:
        ws.send(json.dumps({"type": "hello", "protocol": PROTOCOL_VERSION}))
        ws.send(json.dumps({"type": "submit", "job": "tiny", "mode": "upscale", "image": {"data": tiny},
                            "upscaler": "lanczos", "inline": True}))
        seen = [json.loads(ws.recv(timeout=60))]
        while seen[-1]["type"] not in ("result", "error", "cancelled"):
            seen.append(json.loads(ws.recv(timeout=60)))
    for message in seen:
        server_message.validate(message)
    started = next(message for message in seen if message["type"] == "started")
    assert started["passes"] == [{"box": [0, 0, 6, 4], "diffusion_size": [6, 4]}]
    assert seen[-1]["images"][0]["width"] == 6


def test_lanczos_is_plain_resampling_and_a_target_size_keeps_the_aspect(client):
    small = picture(160, 128)
    result, _ = events_of(client, image=small, width=480, upscaler="lanczos")
    expected = np.asarray(small.resize((480, 384), Image.Resampling.LANCZOS))
    assert (decode(result.images[0].image)[..., :3] == expected).all()


def test_the_x4_upscale_pipeline_follows_the_prompt_in_tiles(client):
    params = dict(image=picture(160, 128), scale=4, upscaler="demo-sd-x4", steps=2, seed=5, prompt="a brick wall")
    result, seen = events_of(client, **params)
    assert [e.step for e in seen if hasattr(e, "step")] == [1, 2], "two tiles of 128 input pixels"
    big = decode(result.images[0].image)
    assert big.shape == (512, 640, 4)
    again, _ = events_of(client, **params)
    assert (decode(again.images[0].image) == big).all(), "same seed, same pixels"
    other, _ = events_of(client, **dict(params, prompt="a glass lake"))
    assert (decode(other.images[0].image) != big).any(), "the prompt steers it"


def test_the_default_upscaler_is_the_first_configured(client):
    result, _ = events_of(client)
    assert result.parameters["upscaler"] == "4x-demo-compact"
    assert (result.parameters["width"], result.parameters["height"]) == (320, 256), "scale 2 by default"


def test_upscale_with_refine_runs_tiles_at_native_scale(client):
    params = dict(image=picture(320, 256), scale=4, refine=0.5, steps=4, prompt="a brick wall", seed=11)
    result, seen = events_of(client, **params)
    started = next(event for event in seen if isinstance(event, Started))
    assert len(started.passes) == 9 and started.steps == 2
    progress = [(e.step, e.total) for e in seen if isinstance(e, Progress)]
    assert progress == [(step, 1 + 9 * 2) for step in range(1, 20)], \
        "the super-resolution tile, then the refine's steps, on one bar (the tiles were not counted)"
    assert all(size == (box[2], box[3]) == (512, 512) for box, size in started.passes)
    refined = decode(result.images[0].image)
    assert refined.shape == (1024, 1280, 4)
    plain, _ = events_of(client, image=picture(320, 256), scale=4)
    assert np.abs(refined.astype(int) - decode(plain.images[0].image)).mean() > 1, "the refine repaints"
    again, _ = events_of(client, **params)
    assert (decode(again.images[0].image) == refined).all(), "same seed, same pixels"


def test_the_refine_of_an_upscale_off_the_latent_grid_keeps_its_tiles_on_it(client):
    """A target whose sides are not multiples of 8 put its last tiles off the 8-px grid of the others (a seam
    where they blend); they are planned on the target extended to the grid, and the result is the target."""
    result, seen = events_of(client, image=picture(250, 175), width=1001, height=701, refine=0.5, steps=2, seed=2)
    started = next(event for event in seen if isinstance(event, Started))
    assert all(box[0] % 8 == 0 and box[1] % 8 == 0 and size == (512, 512) for box, size in started.passes)
    assert max(box[0] + box[2] for box, _ in started.passes) == 1001, "reported on the target"
    assert decode(result.images[0].image).shape == (701, 1001, 4)


def test_a_batch_of_refined_upscales_gives_variations(client):
    """A batch with a refine was refused as if it had none ("an upscale without `refine` makes the same
    picture every time"): the batch rule fired whenever the refine had enough steps."""
    result, _ = events_of(client, image=picture(96, 80), scale=2, refine=0.5, steps=2, batch=2, seed=3)
    first, second = (decode(item.image) for item in result.images)
    assert first.shape == second.shape == (160, 192, 4) and [item.seed for item in result.images] == [3, 4]
    assert (first != second).any(), "each image of the batch refined with its own seed"


@pytest.mark.parametrize("params, code, field", [
    ({"scale": 9}, "invalid_field", "scale"),
    ({"scale": 0.5}, "invalid_field", "scale"),
    ({"scale": 1}, "invalid_field", "scale"),  # handed back a copy of the picture
    ({"width": 160}, "invalid_field", "width"),
    ({"upscaler": "4x-nothing"}, "unknown_upscaler", "upscaler"),
    ({"width": 100}, "invalid_field", "width"),
    ({"scale": 2, "width": 400}, "invalid_field", "scale"),
    ({"batch": 2}, "invalid_field", "batch"),
    ({"strength": 0.3}, "invalid_field", "strength"),  # was ignored: no refine ran
    ({"refine": 0.01, "steps": 20}, "too_few_steps", "refine"),
    ({"mask": png(Image.new("L", (160, 128), 255))}, "invalid_field", "mask"),
    # were listed in the result as if they had steered (a preprocessor as run), though nothing diffused
    ({"control": [{"type": "tile"}]}, "invalid_field", "control"),
    ({"references": [{"image": png(picture(64, 64))}]}, "invalid_field", "references"),
])
def test_bad_upscales_are_refused_before_accepted(client, params, code, field):
    error = refused(client, **params)
    assert (error.code, error.field) == (code, field), error.message
    assert events_of(client)[0].images, "and the next job still runs"


def test_a_16000_pixel_upscale_is_refused_with_the_limit_named(client):
    error = refused(client, image=picture(2000, 1500), scale=8)
    assert (error.code, error.field) == ("limit_exceeded", "scale")
    assert "16000x12000" in error.message and "8192" in error.message
    # and what would do (it said only what would not): the largest scale that fits, to two decimals
    assert "the most it can grow to, keeping its shape, is 8180x6135 (`scale` 4.09)" in error.message
    error = refused(client, image=picture(200, 150), width=16000)
    assert error.field == "width" and error.message.endswith("keeping its shape, is 8192x6144"), error.message
    # the other side of an absurd target in whole digits (a float quotient printed 749999999999999944544724451328)
    error = refused(client, image=picture(200, 150), width=10**30)
    assert f"to {10**30}x{75 * 10**28} is over" in error.message, error.message


# -- easel run upscale --------------------------------------------------------------------------

def test_easel_run_upscale(server, tmp_path, capsys):
    from backend.cli import main

    picture(160, 128).save(tmp_path / "in.png")
    args = ["run", "upscale", "--image", tmp_path / "in.png", "--scale", "2", "--upscaler", "2x-demo-esrgan",
            "--out", tmp_path / "out.png", "--server", server.url]
    assert main([str(a) for a in args]) == 0
    assert Image.open(tmp_path / "out.png").size == (320, 256)
    # a plain upscale draws no noise: no seed is said of it (one was, which nothing could reproduce or vary)
    assert capsys.readouterr().out == f"{tmp_path / 'out.png'}\n"
    args = ["run", "upscale", "--image", tmp_path / "in.png", "--scale", "1.5", "--strength", "0.5", "--steps", "4",
            "--prompt", "a wall", "--out", tmp_path / "refined.png", "--server", server.url]
    assert main([str(a) for a in args]) == 0
    assert Image.open(tmp_path / "refined.png").size == (240, 192)
    assert re.fullmatch(rf"{re.escape(str(tmp_path / 'refined.png'))} \(seed \d+\)\n", capsys.readouterr().out)
    capsys.readouterr()
    assert main(["run", "upscale", "--image", str(tmp_path / "in.png"), "--scale", "12", "--out",
                 str(tmp_path / "x.png"), "--server", server.url]) == 2
    assert "--scale must be at most 8" in capsys.readouterr().err


def test_easel_run_refuses_an_upscale_over_the_limits_before_uploading(server, tmp_path, capsys, monkeypatch):
    """A 6000x4000 photo x 4 was uploaded (30-60 s on a loaded machine) only to be refused as over max_side:
    the welcome's limits say so at once, in the server's words, before any picture is sent."""
    from backend.cli import main
    from shared.client import Client

    frames = []  # the binary ones: uploads
    send_frame = Client._send_frame
    monkeypatch.setattr(Client, "_send_frame", lambda self, frame: (isinstance(frame, bytes) and frames.append(frame))
                        or send_frame(self, frame))
    picture(2000, 1500).save(tmp_path / "big.png")
    for extra, said in ((["--scale", 8], "easel: upscaling the 2000x1500 picture to 16000x12000 is over this "
                         "server's limit of 8192 pixels a side and 67108864 pixels in all; the most it can grow to, "
                         "keeping its shape, is 8180x6135 (--scale 4.09) [limit_exceeded]"),
                        (["--width", 16000], "--width: upscaling the 2000x1500 picture to 16000x12000 is over")):
        capsys.readouterr()
        assert main([str(a) for a in ["run", "upscale", "--image", tmp_path / "big.png", *extra, "--upscaler",
                                      "lanczos", "--out", tmp_path / "x.png", "--server", server.url]]) == 1
        assert said in capsys.readouterr().err
        assert frames == [], "refused before the picture was uploaded"
    picture(160, 128).save(tmp_path / "in.png")
    assert main([str(a) for a in ["run", "upscale", "--image", tmp_path / "in.png", "--scale", 4, "--upscaler",
                                  "lanczos", "--out", tmp_path / "ok.png", "--server", server.url]]) == 0
    assert frames and Image.open(tmp_path / "ok.png").size == (640, 512), "an upscale within the limits runs"


def test_easel_run_upscale_says_when_width_and_height_stretch_the_picture(server, tmp_path, capsys):
    """--width and --height of another shape than the picture stretch it to them: said, not silently squashed."""
    from backend.cli import main

    picture(160, 120).save(tmp_path / "in.png")
    for size, stretched in (((300, 300), True), ((320, 240), False), ((321, 240), False)):
        args = ["run", "upscale", "--image", tmp_path / "in.png", "--width", size[0], "--height", size[1],
                "--upscaler", "lanczos", "--out", tmp_path / f"{size[0]}x{size[1]}.png", "--server", server.url]
        assert main([str(a) for a in args]) == 0
        err = capsys.readouterr().err
        assert Image.open(tmp_path / f"{size[0]}x{size[1]}.png").size == size
        assert ("stretches the 160x120 picture" in err) == stretched, err
        if stretched:
            assert "its own shape at that size is 300x225 or 400x300" in err, err
    assert main([str(a) for a in ["run", "upscale", "--image", tmp_path / "in.png", "--width", 100, "--height", 200,
                                  "--out", tmp_path / "smaller.png", "--server", server.url]]) == 1
    assert "stretches" not in capsys.readouterr().err  # (refused as smaller: the note would only add noise)


def test_transparency_keeps_its_shape(client):
    rgba = np.array(picture(160, 128).convert("RGBA"))
    rgba[:, :80, 3] = 0  # the left half transparent
    result, _ = events_of(client, image=Image.fromarray(rgba), scale=2, upscaler="lanczos")
    alpha = decode(result.images[0].image)[..., 3]
    assert (alpha[:, :150] == 0).all() and (alpha[:, 170:] == 255).all()


@pytest.mark.parametrize("upscaler", ["lanczos", "4x-demo-compact"])
def test_the_colour_hidden_under_transparency_leaves_no_fringe(client, upscaler):
    """A white cut-out on a transparent layer (stored black underneath, as Krita and most editors keep it)
    came back with a dark outline: its edge pixels were resampled with the hidden black."""
    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[24:72, 24:72] = 255
    result, _ = events_of(client, image=Image.fromarray(rgba), scale=2, upscaler=upscaler)
    out = decode(result.images[0].image).astype(int)
    seen = out[..., 3] >= 16  # pixels that show over a background (fainter ones are Lanczos ringing)
    assert seen[48:144, 48:144].all() and not seen[:40].any()
    assert out[..., :3][seen].min() >= 200, "the edge is the cut-out's white, not darkened by the hidden black"


def test_cancel_stops_an_upscale_between_tiles(client):
    job = client.submit("upscale", image=png(picture(1200, 900)), scale=2, upscaler="2x-demo-esrgan")
    seen = []
    for event in client.events(job):
        seen.append(event)
        if isinstance(event, Progress) and event.step == 1:
            client.cancel(job)
    assert isinstance(seen[-1], Cancelled) and seen[-1].stage == "running"
    assert max(e.step for e in seen if isinstance(e, Progress)) <= 2, "stopped after the tile that was running"
