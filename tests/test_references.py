"""IP-Adapter references through the real server, on the demo model's tiny adapter."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from conftest import decode, picture, png, rect_mask
from shared.client import EaselError


def flat(colour):
    return png(Image.new("RGB", (96, 96), colour))


def run(client, mode="img2img", references=(), control=(), model="demo"):
    image = picture(256, 256)
    params = {"prompt": "a house", "steps": 4, "seed": 3, "model": model}
    if mode != "generate":
        params.update(image=png(image), strength=0.8)
    else:
        params.update(width=256, height=256)
    if mode == "inpaint":
        params["mask"] = png(rect_mask(image.size, (60, 60, 200, 200)))
    if references:
        params["references"] = list(references)
    if control:
        params["control"] = list(control)
    return decode(client.run(mode, **params).images[0].image)


@pytest.mark.parametrize("model", ["demo", "demo-xl"])
def test_a_reference_steers_and_weight_zero_is_no_reference(client, model):
    plain = run(client, model=model)
    red = run(client, references=[{"image": flat("red")}], model=model)
    blue = run(client, references=[{"image": flat("blue")}], model=model)
    zero = run(client, references=[{"image": flat("red"), "weight": 0}], model=model)
    assert np.abs(red.astype(int) - plain).mean() > 1
    assert not (red == blue).all()
    assert (zero == plain).all()


def test_a_job_without_references_after_one_with_equals_a_fresh_one(client, demo_config):
    from backend.engine.engine import Engine
    from backend.engine.models import ModelRegistry, pick_device
    from backend.server import ServerThread
    from shared.client import Client

    run(client, references=[{"image": flat("red")}])
    after = run(client)
    fresh_engine = Engine(ModelRegistry(demo_config, *pick_device("cpu")))
    with ServerThread(demo_config, fresh_engine) as fresh, Client(fresh.url) as other:
        assert (run(other) == after).all()


def test_several_references_and_modes(client):
    one = run(client, references=[{"image": flat("red")}])
    two = run(client, references=[{"image": flat("red")}, {"image": flat("blue"), "weight": 0.5}])
    style = run(client, references=[{"image": flat("red"), "mode": "style"}])
    layout = run(client, references=[{"image": flat("red"), "mode": "composition"}])
    assert not (one == two).all()
    assert not (style == one).all() and not (layout == one).all() and not (style == layout).all()


def test_control_reference_and_inpaint_together_keep_untouched_pixels(client):
    image = np.asarray(picture(256, 256))
    control_map = np.zeros((256, 256, 3), np.uint8)
    control_map[:, :128] = 255
    layer = run(client, "inpaint", references=[{"image": flat("green")}],
                control=[{"type": "canny", "image": png(Image.fromarray(control_map))}])
    outside = layer[..., 3] == 0
    assert outside.any() and (layer[outside][:, :3] == image[outside]).all()
    assert not (layer == run(client, "inpaint")).all()


def test_references_without_an_adapter_are_a_clear_error(demo_config):
    from backend.engine.engine import Engine
    from backend.engine.models import ModelRegistry, pick_device
    from backend.server import ServerThread
    from shared.client import Client

    bare = dataclasses.replace(demo_config, ip_adapters={})
    with ServerThread(bare, Engine(ModelRegistry(bare, *pick_device("cpu")))) as server, Client(server.url) as other:
        with pytest.raises(EaselError) as caught:
            run(other, references=[{"image": flat("red")}])
    assert caught.value.code == "unknown_adapter" and "sd15" in caught.value.message


@pytest.mark.parametrize("model", ["demo", "demo-base", "demo-xl"])  # 9-channel and 4-channel inpaint UNets
def test_references_steer_inpainting(client, model):
    plain = run(client, "inpaint", model=model)
    red = run(client, "inpaint", references=[{"image": flat("red")}], model=model)
    assert np.abs(red.astype(int) - plain).mean() > 0.5
    assert (run(client, "inpaint", model=model) == plain).all(), "the adapter is off again afterwards"


@pytest.mark.parametrize("model", ["demo", "demo-xl"])
def test_face_mode_uses_the_face_adapter_and_switches_back(client, model):
    plain = run(client, model=model)
    general = run(client, references=[{"image": flat("red")}], model=model)
    face = run(client, references=[{"image": flat("red"), "mode": "face"}], model=model)
    assert np.abs(face.astype(int) - plain).mean() > 0.5
    assert not (face == general).all(), "the face mode runs another adapter than the general one"
    assert (run(client, references=[{"image": flat("red")}], model=model) == general).all()
    assert (run(client, references=[{"image": flat("red"), "mode": "face", "weight": 0}], model=model)
            == plain).all()


def test_face_mode_errors(client, demo_config):
    from backend.engine.engine import Engine
    from backend.engine.models import ModelRegistry, pick_device
    from backend.server import ServerThread
    from shared.client import Client

    with pytest.raises(EaselError) as caught:
        run(client, references=[{"image": flat("red"), "mode": "face"}, {"image": flat("blue")}])
    assert caught.value.code == "invalid_field" and caught.value.field == "references"
    no_face = dataclasses.replace(demo_config, ip_adapters={
        family: dataclasses.replace(spec, face=None) for family, spec in demo_config.ip_adapters.items()})
    with ServerThread(no_face, Engine(ModelRegistry(no_face, *pick_device("cpu")))) as server, \
            Client(server.url) as other:
        with pytest.raises(EaselError) as caught:
            run(other, references=[{"image": flat("red"), "mode": "face"}])
        assert caught.value.code == "unknown_adapter" and "face" in caught.value.message
        assert run(other, references=[{"image": flat("red")}]).shape == (256, 256, 4), "the general mode works"


def test_adapters_load_from_a_folder_or_the_hub(tmp_path):
    from backend.config import load_config
    from backend.engine.adapters import adapter_location

    (tmp_path / "ip").mkdir()
    (tmp_path / "ip" / "a.safetensors").write_bytes(b"")
    (tmp_path / "easel.toml").write_text(
        '[ip_adapters.sd15]\nweights = "ip/a.safetensors"\nimage_encoder = "ip/encoder"\n'
        '[ip_adapters.sdxl]\nweights = "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors"\n'
        'image_encoder = "h94/IP-Adapter/sdxl_models/image_encoder"\n'
        'face = "h94/IP-Adapter/sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors"\n'
        'face_image_encoder = "h94/IP-Adapter/models/image_encoder"\n')
    adapters = load_config(tmp_path / "easel.toml").ip_adapters
    local = adapters["sd15"]
    assert adapter_location(local.weights, local.image_encoder) == (
        str(tmp_path / "ip"), "", "a.safetensors", str(tmp_path / "ip" / "encoder"))
    hub = adapters["sdxl"]
    assert adapter_location(hub.weights, hub.image_encoder) == (
        "h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.safetensors", "sdxl_models/image_encoder")
    assert adapter_location(hub.face, hub.face_image_encoder) == (
        "h94/IP-Adapter", "sdxl_models", "ip-adapter-plus-face_sdxl_vit-h.safetensors", "models/image_encoder")


@pytest.mark.parametrize("scale", [0.0, 0.6, 1.3])
def test_a_weight_folded_into_the_adapter_equals_diffusers_own_scale(scale):
    """fold_scales moves the reference weight from the attention processors into their value
    projections (so torch.compile sees weights, not constants); the attention output is the same."""
    import types

    import torch
    from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

    from backend.engine.adapters import fold_scales

    torch.manual_seed(0)
    processor = IPAdapterAttnProcessor2_0(hidden_size=32, cross_attention_dim=16, num_tokens=(4,), scale=scale)
    attention = Attention(query_dim=32, cross_attention_dim=16, heads=2, dim_head=16, processor=processor)
    hidden, text, image = torch.randn(1, 10, 32), torch.randn(1, 7, 16), torch.randn(1, 4, 16)
    with torch.no_grad():
        native = attention(hidden, encoder_hidden_states=(text, [image[:, None]]))
        unet = types.SimpleNamespace(attn_processors={"attn": processor})
        loaded = {"attn": [linear.weight.detach().clone() for linear in processor.to_v_ip]}
        for _ in range(2):  # folding again starts from the loaded weights, not from the last fold
            processor.scale = [scale]
            fold_scales(unet, loaded)
        folded = attention(hidden, encoder_hidden_states=(text, [image[:, None]]))
    assert processor.scale == [1.0]
    torch.testing.assert_close(folded, native)
