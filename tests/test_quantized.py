"""Quantised Flux: GGUF transformer files (as city96's FLUX.1 GGUFs sit in ComfyUI's models/unet), loaded by
diffusers' own GGUF support. The demo's `demo-flux-gguf` is the demo Flux with its base and Kontext transformers
in Q8_0 and its Fill transformer in Q4_0: the weights stay quantised in memory, every mode runs through the real
pipelines, untouched pixels stay byte-identical, and a file that is not a Flux GGUF is named in a readable error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from backend.engine import masks
from tests.conftest import decode, picture, png, rect_mask
from tests.test_flux import composite

STEPS = 2


def quantised(module) -> dict[str, int]:
    """Quant type name -> number of GGUF-quantised parameters in ``module``."""
    from diffusers.quantizers.gguf.utils import GGUFParameter

    counts: dict[str, int] = {}
    for param in module.parameters():
        if isinstance(param, GGUFParameter):
            counts[param.quant_type.name] = counts.get(param.quant_type.name, 0) + 1
    return counts


def test_gguf_transformers_load_and_keep_their_weights_quantised(engine):
    import torch

    model = engine.registry.get("demo-flux-gguf")
    plain = engine.registry.get("demo-flux-file").base.transformer
    base, fill = model.base.transformer, model.fill
    linears = sum(isinstance(m, torch.nn.Linear) for m in plain.modules())
    assert quantised(base) == {"Q8_0": linears} and quantised(fill) == {"Q4_0": linears}
    assert quantised(model.kontext) == {"Q8_0": linears}
    nbytes = {name: sum(p.numel() * p.element_size() for p in t.parameters())
              for name, t in (("plain", plain), ("q8", base), ("q4", fill))}
    assert nbytes["q8"] < 0.4 * nbytes["plain"], nbytes  # float32 on the CPU: ~3.8x smaller in Q8_0
    for mode in ("generate", "img2img", "inpaint", "instruct"):  # the mode pipelines share the quantised modules
        assert quantised(model.pipeline(mode).transformer)


def test_gguf_flux_generates_nearly_the_picture_of_its_full_precision_weights(client):
    kwargs = dict(prompt="a lighthouse", steps=STEPS, seed=3, width=96, height=64)
    full = decode(client.run("generate", model="demo-flux-file", **kwargs).images[0].image).astype(int)
    q8 = decode(client.run("generate", model="demo-flux-gguf", **kwargs).images[0].image).astype(int)
    assert q8.shape == (64, 96, 4) and q8[..., :3].std() > 1
    assert 0 < np.abs(q8 - full).mean() < 2, np.abs(q8 - full).mean()  # Q8_0 rounding, not another picture
    again = decode(client.run("generate", model="demo-flux-gguf", **kwargs).images[0].image).astype(int)
    assert (again == q8).all(), "reproducible"


@pytest.mark.parametrize("mode", ["inpaint", "remove", "instruct"])  # the Q4_0 Fill, the Q8_0 Kontext transformer
def test_gguf_masked_edits_leave_every_pixel_outside_the_mask_byte_identical(client, mode):
    image = picture(160, 128, seed=2)
    mask = rect_mask(image.size, (60, 40, 100, 80))
    result = client.run(mode, model="demo-flux-gguf", image=png(image), mask=png(mask), prompt="a red door",
                        steps=5 if mode == "remove" else STEPS, seed=5, guidance=3.5 if mode == "instruct" else 30)
    out, source = composite(image, result.images[0]), np.asarray(image)
    reach = masks.shape_mask(np.asarray(mask), 8, 16) > 0
    assert (out[~reach] == source[~reach]).all()
    assert np.abs(out[np.asarray(mask) > 0].astype(int) - source[np.asarray(mask) > 0]).mean() > 5


def test_gguf_fill_under_cpu_offload_hooks_gives_the_same_pixels(demo_root):
    """``cpu_offload``'s hooks (diffusers' enable_model_cpu_offload, here with the CPU as the execution
    device: the hooks run, nothing moves) around quantised weights: the same picture."""
    import torch
    from PIL import Image

    from backend.config import Config
    from backend.engine.models import ModelRegistry, pick_device
    from backend.fixtures.demo_flux import demo_flux_models

    spec = demo_flux_models(demo_root)["demo-flux-gguf"]
    pipe = ModelRegistry(Config(models={spec.name: spec}), *pick_device("cpu")).get(spec.name).pipeline("inpaint")
    call = dict(prompt="x", image=Image.new("RGB", (64, 64), (120, 80, 40)), mask_image=Image.new("L", (64, 64), 255),
                height=64, width=64, num_inference_steps=2, guidance_scale=30, max_sequence_length=32, output_type="np")
    plain = pipe(generator=torch.Generator().manual_seed(1), **call).images
    pipe.enable_model_cpu_offload(device=torch.device("cpu"))
    assert hasattr(pipe.transformer, "_hf_hook") and quantised(pipe.transformer) == {"Q4_0": 30}
    assert (pipe(generator=torch.Generator().manual_seed(1), **call).images == plain).all()


def test_gguf_models_are_described_without_loading(demo_root):
    from backend.config import Config
    from backend.engine.models import ModelRegistry, pick_device
    from backend.fixtures.demo_flux import demo_flux_models

    spec = dataclasses.replace(demo_flux_models(demo_root)["demo-flux-gguf"], family=None)  # told from the file
    registry = ModelRegistry(Config(models={spec.name: spec}), *pick_device("cpu"))
    (described,) = registry.describe()
    assert (described.family, described.native_size, described.loaded) == ("flux", 512, False)
    assert {"generate", "inpaint", "expand", "instruct"} <= set(described.capabilities.modes)


def test_gguf_headers_give_torch_shapes_and_a_fill_file_is_told_apart(demo_root, tmp_path):
    import gguf

    from backend.config import ModelSpec
    from backend.engine.capabilities import configured_kind, gguf_shapes

    unet = demo_root / "flux-comfy" / "unet"
    assert gguf_shapes(unet / "flux-demo-Q8_0.gguf")["x_embedder.weight"] == [32, 64]  # (out, in), as torch has it
    assert gguf_shapes(unet / "flux-fill-demo-Q4_0.gguf")["x_embedder.weight"] == [32, 192]
    writer = gguf.GGUFWriter(str(tmp_path / "fill.gguf"), arch="flux")  # FLUX.1 Fill's input: 384 channels
    writer.add_tensor("img_in.weight", np.zeros((3072, 384), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert configured_kind(ModelSpec("f", str(tmp_path / "fill.gguf"), "flux")) == "inpaint"
    assert configured_kind(ModelSpec("b", str(unet / "flux-demo-Q8_0.gguf"), "flux")) == "base"


def gguf_without_flux(path):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_files_that_are_broken_or_not_flux_are_named(demo_root, tmp_path):
    from backend.config import Config
    from backend.engine.models import ModelError, ModelRegistry, pick_device
    from backend.fixtures.demo_flux import demo_flux_models

    spec = demo_flux_models(demo_root)["demo-flux-gguf"]
    whole = (demo_root / "flux-comfy" / "unet" / "flux-fill-demo-Q4_0.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "renamed.gguf").write_bytes(Path(spec.vae).read_bytes()[:4096])
    gguf_without_flux(tmp_path / "llm.gguf")
    cases = {"cut": "is not a readable GGUF file", "renamed": "is not a readable GGUF file",
             "llm": "holds no Flux transformer"}
    for name, said in cases.items():
        broken = str(tmp_path / f"{name}.gguf")
        for key in ("inpaint", "source"):
            config = Config(models={name: dataclasses.replace(spec, name=name, **{key: broken})})
            with pytest.raises(ModelError) as caught:
                ModelRegistry(config, *pick_device("cpu")).get(name)
            message = caught.value.message
            assert caught.value.code == "model_load_failed" and said in message and broken in message, message
            assert repr(name) in message, message  # the model too


# -- quantize = "int8": torchao's int8 weight-only, through diffusers' TorchAoConfig, on diffusers folders --


def int8_weights(module) -> int:
    """How many of ``module``'s parameters are torchao int8 tensors."""
    return sum("Int8" in type(param).__name__ for param in module.parameters())


def test_int8_quantize_setting_quantises_folder_transformers_and_every_mode_runs(demo_config):
    pytest.importorskip("torchao")
    from backend.config import Config
    from backend.engine.engine import Engine
    from backend.engine.models import ModelRegistry, pick_device
    from backend.server import ServerThread
    from shared.client import Client

    spec = dataclasses.replace(demo_config.models["demo-flux"], name="int8", quantize="int8")
    config = Config(port=0, models={"int8": spec, "demo-flux": demo_config.models["demo-flux"]})
    engine = Engine(ModelRegistry(config, *pick_device("cpu")))
    model = engine.registry.get("int8")
    linears = int8_weights(model.base.transformer)
    assert linears == 30 and int8_weights(model.fill) == linears and int8_weights(model.kontext) == linears
    assert int8_weights(model.base.text_encoder_2) == 0, "only the transformers"
    kwargs = dict(prompt="a lighthouse", steps=STEPS, seed=3, width=96, height=64)
    image = picture(160, 128, seed=2)
    mask = rect_mask(image.size, (60, 40, 100, 80))
    reach = masks.shape_mask(np.asarray(mask), 8, 16) > 0
    with ServerThread(config, engine) as server, Client(server.url) as client:
        full = decode(client.run("generate", model="demo-flux", **kwargs).images[0].image).astype(int)
        int8 = decode(client.run("generate", model="int8", **kwargs).images[0].image).astype(int)
        assert 0 < np.abs(int8 - full).mean() < 2, np.abs(int8 - full).mean()
        for mode in ("inpaint", "instruct"):
            result = client.run(mode, model="int8", image=png(image), mask=png(mask), prompt="a red door",
                                steps=STEPS, seed=5)
            out = composite(image, result.images[0])
            assert (out[~reach] == np.asarray(image)[~reach]).all()
    assert int8_weights(model.pipeline("inpaint").transformer) == linears


def test_quantize_setting_is_checked(tmp_path):
    from backend.config import ConfigError, load_config

    (tmp_path / "easel.toml").write_text('[models.f]\nsource = "black-forest-labs/FLUX.1-dev"\nfamily = "flux"\n'
                                         'quantize = "int8"\n')
    assert load_config(tmp_path / "easel.toml").check().models["f"].quantize == "int8"
    for lines, said in (('source = "a/b"\nfamily = "flux"\nquantize = "int4"', "must be 'int8'"),
                        ('source = "a/b"\nfamily = "sdxl"\nquantize = "int8"', "flux models"),
                        ('source = "./flux1-dev-Q8_0.gguf"\nfamily = "flux"\nquantize = "int8"', "quantised already")):
        (tmp_path / "bad.toml").write_text(f"[models.f]\n{lines}\n")
        with pytest.raises(ConfigError, match=said):
            load_config(tmp_path / "bad.toml").check()


def test_quantize_on_a_single_safetensors_transformer_is_refused_naming_the_file(demo_config, demo_root):
    pytest.importorskip("torchao")
    from backend.config import Config
    from backend.engine.models import ModelError, ModelRegistry, pick_device

    fill = str(demo_root / "flux-comfy" / "diffusion_models" / "flux-demo.safetensors")
    spec = dataclasses.replace(demo_config.models["demo-flux"], name="mixed", quantize="int8", inpaint=fill)
    with pytest.raises(ModelError) as caught:
        ModelRegistry(Config(models={"mixed": spec}), *pick_device("cpu")).get("mixed")
    assert fill in caught.value.message and "GGUF" in caught.value.message, caught.value.message


# Where each K-quant block keeps its float16 scale(s) (ggml's block_qN_K layouts): set to sane values, the
# rest of the block random, so that the blocks are valid whatever their bytes.
K_SCALES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


@pytest.mark.parametrize("quant", sorted(K_SCALES))
def test_k_quant_blocks_decode_as_the_gguf_reference_does(quant):
    """city96's FLUX.1 files are mostly K-quants (Q4_K_S, Q5_K_S, Q6_K ...), which the gguf package cannot
    write here: random valid blocks, decoded by diffusers' GGUF layer, equal the gguf package's reference."""
    import gguf
    import torch
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    qtype = gguf.GGMLQuantizationType[quant]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (4, 2, size), dtype=np.uint8)
    for offset in K_SCALES[quant]:
        data[..., offset:offset + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    data = data.reshape(4, 2 * size)
    want = gguf.quants.dequantize(data, qtype)
    got = dequantize_gguf_tensor(GGUFParameter(torch.from_numpy(data), quant_type=qtype)).float().numpy()
    assert want.shape == got.shape == (4, 2 * block)
    # (diffusers decodes in float16, the reference in float32: equal to float16's precision of the largest value)
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max(), np.abs(got - want).max() / np.abs(want).max()
