"""The full-size random models have the real architectures (checked without allocating them)."""

from __future__ import annotations

import pytest

from backend.config import load_config
from backend.fixtures import full_size as full


@pytest.mark.parametrize("family, part", sorted(full.KNOWN_PARAMETERS))
def test_modules_have_the_published_parameter_counts(family, part):
    module = full.build(family, part, device="meta")  # shapes only: no memory, no time
    assert sum(p.numel() for p in module.parameters()) == full.KNOWN_PARAMETERS[family, part]


def test_unet_configs_are_the_published_ones():
    sd15, sdxl = full.build("sd15", "unet", "meta").config, full.build("sdxl", "inpaint_unet", "meta").config
    assert (sd15.sample_size, sd15.block_out_channels, sd15.cross_attention_dim, sd15.attention_head_dim) == \
        (64, (320, 640, 1280, 1280), 768, 8)
    assert (sdxl.in_channels, sdxl.sample_size, sdxl.transformer_layers_per_block, sdxl.cross_attention_dim,
            sdxl.addition_embed_type, sdxl.projection_class_embeddings_input_dim) == \
        (9, 128, (1, 2, 10), 2048, "text_time", 2816)
    encoder = full.build("sdxl", "image_encoder", "meta").config
    assert (encoder.hidden_size, encoder.num_hidden_layers, encoder.patch_size, encoder.projection_dim) == \
        (1664, 48, 14, 1280)  # OpenCLIP ViT-bigG/14, as h94's sdxl_models/image_encoder


def test_tokenizer_pads_prompts_to_clip_length_with_the_real_special_ids():
    tokenizer = full.tokenizer()
    ids = tokenizer("a red door", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(tokenizer) == 49408 and len(ids) == 77
    assert (ids[0], tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)
    assert full.tokenizer(pad_token="!").pad_token_id == 0  # SDXL's second tokenizer pads with "!"


def test_written_config_serves_each_family(tmp_path):
    config = load_config(full.write_config(tmp_path, ("sd15", "sdxl")))
    assert config.default == "sd15" and set(config.models) == {"sd15", "sdxl"}
    assert config.models["sdxl"].inpaint == str(tmp_path / "sdxl-inpaint")
    assert config.controlnets["sd15"] == {"canny": str(tmp_path / "controlnet" / "sd15"),
                                          "depth": str(tmp_path / "controlnet" / "sd15")}
    assert config.ip_adapters["sdxl"].image_encoder == str(tmp_path / "ip-adapter" / "sdxl" / "image_encoder")


# The same writer at toy widths (full.TOY): the folders, links, tokenizers, ControlNets and IP-Adapters it
# writes must load and run through Easel for both families. (The full sizes are the bench's to write.)
def test_written_folders_serve_steered_inpaint_jobs(tmp_path):
    import numpy as np

    from backend.engine.engine import Engine
    from backend.engine.job import Control, EditJob, Reference
    from backend.engine.models import ModelRegistry, pick_device

    root = full.write_full_size_model(tmp_path, log=lambda line: None, toy=True)
    assert (root / "sdxl-inpaint" / "vae").is_symlink() and (root / "sdxl" / "tokenizer_2").is_dir()
    engine = Engine(ModelRegistry(load_config(root / "easel.toml"), *pick_device("cpu")))

    rng = np.random.default_rng(0)
    image = np.dstack([rng.integers(0, 256, (64, 64, 3), np.uint8), np.full((64, 64), 255, np.uint8)])
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255

    class Quiet:
        def started(self, *args): pass

        def progress(self, *args): pass

        def is_cancelled(self): return False

    for family in full.FAMILIES:
        units = [Control(kind, image, None, 1.0, 0.0, 1.0) for kind in full.CONTROL_TYPES]
        request = EditJob(mode="inpaint", model=family, prompt="a door", negative_prompt="",
                              seed=1, steps=2, guidance=5.0, strength=1.0, batch=1, sampler="euler", image=image,
                              mask=mask, control=units, references=[Reference(image, 1.0, "reference")])
        layer = engine.run(request, Quiet()).layers[0]
        model = engine.registry.get(family)
        assert layer.pixels.shape == (64, 64, 4) and model.inpaint_unet.config.in_channels == 9
        assert model.base.unet.encoder_hid_proj is None  # the adapter went into the inpaint UNet that ran
        assert model.inpaint_unet.encoder_hid_proj is not None
    assert sorted(engine.controlnets.loaded()) == [(f, k) for f in ("sd15", "sdxl") for k in ("canny", "depth")]
