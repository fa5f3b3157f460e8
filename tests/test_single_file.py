"""Single-file (original SD / A1111 format) checkpoints load offline through Easel's model registry.

The tiny demo SD1.5 pipeline is written as an LDM-format ``.safetensors`` (tests/ldm_checkpoint.py)
and loaded with ``config=`` pointing at a folder of its configs only, so every weight has to come
from the single file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from backend.config import Config, ModelSpec, scan_model_folder
from backend.engine.engine import Engine
from backend.engine.job import EditJob
from backend.engine.models import ModelRegistry, configured_native_size, detect_family
from ldm_checkpoint import CLIP, UNET, VAE, unet_to_ldm, vae_to_ldm, write_ldm_checkpoint

COMPONENTS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def single_file(demo_root, tmp_path_factory):
    """(checkpoint, configs-only folder) for the demo SD1.5 model."""
    tmp = tmp_path_factory.mktemp("single-file")
    checkpoint = write_ldm_checkpoint(demo_root / "sd15", tmp / "models" / "tiny-v15.safetensors")
    configs = tmp / "sd15-configs"
    shutil.copytree(demo_root / "sd15", configs, ignore=shutil.ignore_patterns("*.safetensors"))
    return checkpoint, configs


@pytest.fixture(scope="module")
def registry(demo_root, single_file):
    checkpoint, configs = single_file
    config = Config(models={"tiny": ModelSpec("tiny", str(checkpoint), config=str(configs)),
                            "folder": ModelSpec("folder", str(demo_root / "sd15"))})
    return ModelRegistry(config, torch.device("cpu"), torch.float32)


def test_checkpoint_has_original_key_layout(single_file):
    from safetensors import safe_open

    with safe_open(str(single_file[0]), framework="pt") as weights:
        keys = set(weights.keys())
        assert weights.get_slice(UNET + "input_blocks.0.0.weight").get_shape()[1] == 4
    assert {key.split(".")[0] for key in keys} == {"model", "first_stage_model", "cond_stage_model"}
    for key in (UNET + "time_embed.0.weight", UNET + "middle_block.1.proj_in.weight",
                UNET + "output_blocks.1.2.conv.weight", VAE + "decoder.up.3.upsample.conv.weight",
                VAE + "encoder.mid.block_1.norm1.weight",
                CLIP + "text_model.embeddings.position_embedding.weight"):
        assert key in keys, key


def test_single_file_loads_offline_with_the_folders_weights(registry, single_file):
    assert detect_family(str(single_file[0])) == "sd15"
    model, reference = registry.get("tiny"), registry.get("folder")
    assert model.family == "sd15" and type(model.base) is type(reference.base)
    for name in COMPONENTS:
        loaded, expected = getattr(model.base, name).state_dict(), getattr(reference.base, name).state_dict()
        assert loaded.keys() == expected.keys(), name
        different = [key for key in expected if not torch.equal(loaded[key], expected[key])]
        assert not different, f"{name}: {different[:5]}"
    assert model.native_size == reference.native_size == 512


class _Quiet:
    def started(self, steps, passes): pass

    def progress(self, step, total, preview): pass

    def is_cancelled(self): return False


def test_generate_matches_the_diffusers_folder(registry):
    engine = Engine(registry)

    def run(model):
        request = EditJob(mode="generate", model=model, prompt="a lighthouse", negative_prompt="",
                              seed=7, steps=2, guidance=5.0, strength=1.0, batch=1, sampler="euler",
                              width=64, height=64)
        return engine.run(request, _Quiet()).layers[0].pixels

    single, folder = run("tiny"), run("folder")
    assert single.shape == (64, 64, 4) and single[..., :3].std() > 1
    np.testing.assert_array_equal(single, folder)


def test_a1111_model_folder_finds_the_checkpoint(single_file):
    checkpoint, configs = single_file
    specs = scan_model_folder(checkpoint.parent)
    assert list(specs) == ["tiny-v15"] and specs["tiny-v15"].source == str(checkpoint)
    spec = specs["tiny-v15"]
    spec.config = str(configs)
    model = ModelRegistry(Config(models=specs), torch.device("cpu"), torch.float32).get("tiny-v15")
    assert model.family == "sd15" and model.base.unet.config.in_channels == 4



def test_unloaded_single_files_report_their_family_and_native_size(single_file, tmp_path):
    """Hosts plan crops from the `models` reply before anything loads: a single file found in a model
    folder has its family read from its header, so an SDXL checkpoint plans at 1024, not 512."""
    from safetensors.torch import save_file

    from backend.engine.models import SDXL_KEY

    checkpoint, _ = single_file
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    (folder / "tiny-v15.safetensors").symlink_to(checkpoint)
    save_file({SDXL_KEY: torch.zeros(2), UNET + "time_embed.0.weight": torch.zeros(2, 2)},
              str(folder / "an-xl-model.safetensors"))  # an SDXL checkpoint's header, in miniature
    (folder / "truncated.safetensors").write_bytes(b"\x10\x00")
    skipped = {}
    registry = ModelRegistry(Config(models=scan_model_folder(folder, skipped=skipped)), torch.device("cpu"),
                             torch.float32)
    described = {entry.name: entry for entry in registry.describe()}
    assert {name: (entry.family, entry.native_size, entry.loaded) for name, entry in described.items()} == {
        "tiny-v15": ("sd15", 512, False), "an-xl-model": ("sdxl", 1024, False)}
    assert "too short" in skipped["truncated"], "a file that is no checkpoint is left out, saying why"
    assert registry.loaded_names() == []
    explicit = ModelSpec("x", str(folder / "an-xl-model.safetensors"), family="sd15")
    assert configured_native_size(explicit) == 512, "a configured family wins over the file's header"

@pytest.fixture(scope="module")
def inpaint_file(demo_root, single_file):
    return write_ldm_checkpoint(demo_root / "sd15-inpaint", single_file[0].parent / "tiny-v15-inpainting.safetensors")


def test_single_file_inpainting_checkpoint_served_on_its_own(demo_root, inpaint_file):
    spec = ModelSpec("inpainting", str(inpaint_file), config=str(demo_root / "sd15-inpaint"))
    model = ModelRegistry(Config(models={"inpainting": spec}), torch.device("cpu"), torch.float32).get("inpainting")
    assert model.inpaint_only and model.pipeline("inpaint").unet.config.in_channels == 9


def test_single_file_inpaint_unet_next_to_a_single_file_model(demo_root, single_file, inpaint_file):
    from diffusers import UNet2DConditionModel

    checkpoint, configs = single_file
    spec = ModelSpec("tiny", str(checkpoint), config=str(configs), inpaint=str(inpaint_file))
    model = ModelRegistry(Config(models={"tiny": spec}), torch.device("cpu"), torch.float32).get("tiny")
    expected = UNet2DConditionModel.from_pretrained(demo_root / "sd15-inpaint" / "unet").state_dict()
    loaded = model.inpaint_unet.state_dict()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


def test_converter_inverts_diffusers_on_deeper_blocks(tmp_path):
    """Block numbering for 3 levels x 2 layers and VAE mid attention (1x1 conv weights in the file),
    checked against diffusers' own LDM -> diffusers converters."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16, 16), layers_per_block=2,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                norm_num_groups=8, cross_attention_dim=8, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, layers_per_block=2)
    for model, to_ldm, back in ((unet, unet_to_ldm, convert_ldm_unet_checkpoint),
                                (vae, vae_to_ldm, convert_ldm_vae_checkpoint)):
        state = model.state_dict()
        config = json.loads(json.dumps(dict(model.config)))
        checkpoint = to_ldm(state, config)
        restored = back(checkpoint, config)
        assert restored.keys() == state.keys()
        assert all(torch.equal(restored[key], state[key]) for key in state)
    checkpoint = vae_to_ldm(vae.state_dict(), dict(vae.config))
    assert checkpoint[VAE + "encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    assert VAE + "decoder.up.1.block.2.conv1.weight" in checkpoint  # decoder levels count upwards
