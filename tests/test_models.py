"""Model sources, sharing of weights between modes, and the TOML config."""

import pytest
import torch
from safetensors.torch import save_file

from backend.config import Config, ConfigError, ModelSpec, load_config
from backend.engine.engine import Engine
from backend.engine.models import ModelError, ModelRegistry, configured_native_size, detect_family
from backend.server import ServerThread
from conftest import picture, png, rect_mask
from shared.client import Client, EaselError


def test_all_modes_share_one_set_of_weights_and_keep_dtype(engine):
    model = engine.registry.get("demo-xl")
    generate, img2img, inpaint = (model.pipeline(mode) for mode in ("generate", "img2img", "inpaint"))
    assert generate.vae is img2img.vae is inpaint.vae
    assert generate.text_encoder_2 is inpaint.text_encoder_2
    assert generate.unet is img2img.unet
    assert inpaint.unet.config.in_channels == 9, "the dedicated inpaint UNet is used for inpaint"
    assert {p.dtype for p in (generate, img2img, inpaint)} == {generate.dtype}
    base = engine.registry.get("demo-base")
    assert base.pipeline("inpaint").unet is base.base.unet, "no inpaint model: the 4-channel UNet inpaints"


def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not really")
    config = Config(models={"old": ModelSpec("old", str(checkpoint), "sd15")})
    with pytest.raises(ModelError) as caught:
        ModelRegistry(config, torch.device("cpu"), torch.float32).get("old")
    assert caught.value.code == "model_load_failed" and "pickle" in caught.value.message


def test_unknown_and_unloadable_models_give_clear_errors(tmp_path):
    config = Config(models={"gone": ModelSpec("gone", str(tmp_path / "nothing-here"), "sd15")})
    registry = ModelRegistry(config, torch.device("cpu"), torch.float32)
    with pytest.raises(ModelError) as caught:
        registry.get("other")
    assert caught.value.code == "unknown_model"
    with pytest.raises(ModelError) as caught:
        registry.get("gone")
    assert caught.value.code == "model_load_failed" and "gone" in caught.value.message


def test_family_is_read_from_single_files_and_folders(tmp_path, demo_root):
    xl = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(1)}, str(xl))
    sd = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.out.0.weight": torch.zeros(1)}, str(sd))
    assert detect_family(str(xl)) == "sdxl" and detect_family(str(sd)) == "sd15"
    assert detect_family(str(demo_root / "sdxl")) == "sdxl" and detect_family(str(demo_root / "sd15")) == "sd15"
    assert configured_native_size(ModelSpec("d", str(demo_root / "sdxl"))) == 512
    assert configured_native_size(ModelSpec("x", "some/hub-id", "sdxl")) == 1024


def test_toml_config(tmp_path):
    (tmp_path / "easel.toml").write_text('''
[server]
port = 9000
default_model = "mine"

[limits]
max_steps = 40

[models.mine]
source = "./weights/model.safetensors"
inpaint = "./weights/inpaint.safetensors"
''')
    config = load_config(tmp_path / "easel.toml").check()
    assert config.port == 9000 and config.limits.max_steps == 40 and config.default == "mine"
    assert config.models["mine"].source == str(tmp_path / "weights" / "model.safetensors")
    (tmp_path / "bad.toml").write_text('[limits]\nmax_stepz = 3\n')
    with pytest.raises(ConfigError, match="max_stepz"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "nosource.toml").write_text('[models.a]\nfamily = "sd15"\n')
    with pytest.raises(ConfigError, match="source"):
        load_config(tmp_path / "nosource.toml")


def test_a_models_folder_serves_every_checkpoint_in_it(demo_root, tmp_path):
    (tmp_path / "easel.toml").write_text(f'[server]\nport = 0\nmodel_folders = ["{demo_root}"]\n')
    config = load_config(tmp_path / "easel.toml").check()
    assert set(config.models) >= {"sd15", "sd15-inpaint", "sdxl", "sdxl-inpaint", "sd15-instruct", "sd15-vpred"}
    image = picture(128, 128)
    with ServerThread(config, Engine(ModelRegistry(config, torch.device("cpu"), torch.float32))) as server, \
            Client(server.url) as client:
        result = client.run("inpaint", model="sd15-inpaint", prompt="x", steps=2, seed=0, image=png(image),
                            mask=png(rect_mask(image.size, (30, 30, 90, 90))))
        assert result.images[0].image.width > 0
        with pytest.raises(EaselError) as caught:
            client.run("generate", model="sd15-inpaint", prompt="x", steps=2, width=64, height=64)
        assert (caught.value.code, caught.value.field) == ("unsupported_mode", "mode")
        listed = {m["name"]: m for m in client.models()["models"]}
        assert listed["sd15-inpaint"]["inpaint_model"] is True
        # told from the folders before loading: the inpaint and InstructPix2Pix pipelines serve their modes only
        assert listed["sd15-inpaint"]["capabilities"]["modes"] == ["inpaint", "expand", "remove"]
        assert listed["sd15-instruct"]["capabilities"]["modes"] == ["instruct"]


def test_a_controlnet_folder_is_read_by_file_name(tmp_path):
    folder = tmp_path / "ControlNet"
    folder.mkdir()
    for name in ("control_v11p_sd15_canny", "control_v11p_sd15s2_lineart_anime", "control_v11f1p_sd15_depth",
                 "diffusers_xl_depth_full", "control_v11p_sd15_openpose", "notes"):
        (folder / f"{name}.safetensors").write_bytes(b"")
    (tmp_path / "easel.toml").write_text(
        f'[server]\ncontrolnet_folders = ["{folder}"]\n\n[controlnets.sd15]\ncanny = "/mine/canny"\n')
    config = load_config(tmp_path / "easel.toml")
    anime = str(folder / "control_v11p_sd15s2_lineart_anime.safetensors")
    assert config.controlnets["sd15"] == {"canny": "/mine/canny",
                                          "lineart_anime": anime,
                                          "depth": str(folder / "control_v11f1p_sd15_depth.safetensors"),
                                          "pose": str(folder / "control_v11p_sd15_openpose.safetensors")}
    assert config.controlnets["sdxl"] == {"depth": str(folder / "diffusers_xl_depth_full.safetensors")}
