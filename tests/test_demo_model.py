"""The tiny demo model family: written offline, loads with the real diffusers pipelines, and behaves."""

from __future__ import annotations

import contextlib
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers import (  # noqa: E402
    AutoencoderTiny,
    ControlNetModel,
    MultiControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from backend.fixtures.demo_model import (  # noqa: E402
    CONTROL_TYPES,
    DEMO_FOLDERS,
    IP_ADAPTER_FACE_WEIGHTS,
    IP_ADAPTER_WEIGHTS,
    demo_controlnets,
    demo_ip_adapters,
    write_demo_model,
)

SD_KWARGS = dict(safety_checker=None, requires_safety_checker=False)
PIPELINES = {
    "sd15": (StableDiffusionPipeline, SD_KWARGS),
    "sd15-inpaint": (StableDiffusionInpaintPipeline, SD_KWARGS),
    "sdxl": (StableDiffusionXLPipeline, dict(add_watermarker=False)),
    "sdxl-inpaint": (StableDiffusionXLInpaintPipeline, dict(add_watermarker=False)),
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # The demo models are tiny: one intra-op thread is barely slower, and it avoids
    # the 10x slowdowns of oversubscribed OpenMP threads on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("tiny-demo"))


# ControlNet pipelines per family: txt2img, img2img, inpaint.
CONTROL_PIPELINES = {
    "sd15": (StableDiffusionControlNetPipeline, StableDiffusionControlNetImg2ImgPipeline,
             StableDiffusionControlNetInpaintPipeline),
    "sdxl": (StableDiffusionXLControlNetPipeline, StableDiffusionXLControlNetImg2ImgPipeline,
             StableDiffusionXLControlNetInpaintPipeline),
}


@contextlib.contextmanager
def offline():
    """Loading must not touch the network."""
    real_connect = socket.socket.connect

    def no_network(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access while loading the demo model: {address}")
        return real_connect(self, address)

    socket.socket.connect = no_network
    try:
        yield
    finally:
        socket.socket.connect = real_connect


@pytest.fixture(scope="module")
def pipes(demo_dir):
    loaded = {}
    with offline():
        for name, (cls, kwargs) in PIPELINES.items():
            loaded[name] = cls.from_pretrained(demo_dir / name, **kwargs)
            loaded[name].set_progress_bar_config(disable=True)
    return loaded


@pytest.fixture(scope="module")
def controlnets(demo_dir):
    """Every demo ControlNet, loaded offline from its own folder: {family: {type: model}}."""
    with offline():
        return {family: {kind: ControlNetModel.from_pretrained(folder) for kind, folder in folders.items()}
                for family, folders in demo_controlnets(demo_dir).items()}


def gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def gradient(size: int = 128) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size] * (255.0 / (size - 1))
    return Image.fromarray(np.stack([xx, yy, (xx + yy) / 2], -1).astype(np.uint8))


def test_writes_exactly_the_model_folders(demo_dir):
    assert sorted(p.name for p in demo_dir.iterdir()) == sorted(DEMO_FOLDERS)
    for name in PIPELINES:
        assert (demo_dir / name / "model_index.json").is_file()
        assert list((demo_dir / name / "unet").glob("*.safetensors"))
        assert not list((demo_dir / name).rglob("*.bin"))
    folders = demo_controlnets(demo_dir)
    assert sorted(folders) == ["sd15", "sdxl"]
    assert sorted(p.name for p in (demo_dir / "controlnet").iterdir()) == ["sd15", "sdxl"]
    for family, by_type in folders.items():
        assert list(by_type) == list(CONTROL_TYPES)
        assert sorted(p.name for p in (demo_dir / "controlnet" / family).iterdir()) == sorted(CONTROL_TYPES)
        for kind, folder in by_type.items():
            assert isinstance(folder, str) and folder == str(demo_dir / "controlnet" / family / kind)
            assert sorted(p.name for p in os.scandir(folder)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    adapters = demo_ip_adapters(demo_dir)
    assert adapters == {family: str(demo_dir / "ip-adapter" / family) for family in ("sd15", "sdxl")}
    assert sorted(p.name for p in (demo_dir / "ip-adapter").iterdir()) == ["sd15", "sdxl"]
    for folder in adapters.values():
        assert sorted(p.name for p in os.scandir(folder)) == sorted(
            ["image_encoder", IP_ADAPTER_WEIGHTS, IP_ADAPTER_FACE_WEIGHTS])
        assert sorted(p.name for p in os.scandir(os.path.join(folder, "image_encoder"))) == [
            "config.json", "model.safetensors", "preprocessor_config.json"]


@pytest.mark.parametrize("name", list(PIPELINES))
def test_loads_with_matching_pipeline(pipes, name):
    pipe = pipes[name]
    assert type(pipe) is PIPELINES[name][0]
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 512
    assert pipe.unet.config.in_channels == (9 if name.endswith("inpaint") else 4)
    assert pipe.tokenizer.model_max_length == 77
    if name.startswith("sdxl"):
        assert pipe.unet.config.addition_embed_type == "text_time"
        assert pipe.vae.config.scaling_factor == pytest.approx(0.13025)
    else:
        assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)


def test_tokenizer_covers_plain_text(pipes):
    pipe = pipes["sdxl"]
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer("A photo of a cat, 4k! Café naïve (detailed)", padding="max_length",
                        truncation=True, max_length=tokenizer.model_max_length).input_ids
        assert len(ids) == 77
        assert max(ids) < encoder.config.vocab_size
        body = ids[1 : ids.index(tokenizer.eos_token_id)]
        assert body and tokenizer.unk_token_id not in body


def test_taesd_decodes_demo_latents(demo_dir, pipes):
    taesd = AutoencoderTiny.from_pretrained(demo_dir / "taesd")
    assert taesd.config.latent_channels == 4
    vae = pipes["sd15"].vae
    image = torch.from_numpy(pixels(gradient())).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        latents = vae.encode(image).latent_dist.mode() * vae.config.scaling_factor
        preview = taesd.decode(latents).sample
    assert preview.shape == (1, 3, 128, 128)
    # the preview shows the picture the latents came from (the demo codecs are linear)
    assert (preview.clamp(-1, 1) - image).abs().mean() < 0.1


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_txt2img_runs_and_depends_on_prompt_and_seed(pipes, name):
    pipe = pipes[name]
    run = lambda prompt, seed: pipe(prompt, num_inference_steps=2, height=128, width=128,  # noqa: E731
                                    generator=gen(seed)).images[0]
    cat = run("a photo of a cat", 1)
    assert cat.size == (128, 128)
    assert np.array_equal(pixels(cat), pixels(run("a photo of a cat", 1)))
    assert np.abs(pixels(cat) - pixels(run("an oil painting of a dog", 1))).mean() > 1.0
    assert np.abs(pixels(cat) - pixels(run("a photo of a cat", 2))).mean() > 1.0
    assert 0.0 < pixels(cat).mean() < 255.0


def test_img2img_strength_controls_distance_to_init(pipes):
    pipe = StableDiffusionImg2ImgPipeline(**pipes["sd15"].components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    init = gradient()
    distance = {}
    for strength in (0.3, 0.9):
        out = pipe("a photo of a cat", image=init, strength=strength, num_inference_steps=4, generator=gen(1)).images[0]
        distance[strength] = np.abs(pixels(out) - pixels(init)).mean()
    assert distance[0.3] < distance[0.9]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_inpaint_with_base_and_inpaint_unets(pipes, family):
    init = gradient()
    mask = np.zeros((128, 128), np.uint8)
    mask[32:96, 32:96] = 255
    cls = PIPELINES[f"{family}-inpaint"][0]
    extra = dict(requires_safety_checker=False) if family == "sd15" else {}
    base = cls(**pipes[family].components, **extra)  # the 4-channel UNet
    base.set_progress_bar_config(disable=True)
    outside = mask == 0
    for pipe in (base, pipes[f"{family}-inpaint"]):
        out = pipe("a photo of a cat", image=init, mask_image=Image.fromarray(mask), num_inference_steps=2,
                   height=128, width=128, generator=gen(1)).images[0]
        assert out.size == (128, 128)
        if pipe is base:  # the 4-channel path blends the init latents back in outside the mask
            assert np.abs(pixels(out) - pixels(init))[outside].mean() < 10


def test_same_seed_writes_same_weights(demo_dir, tmp_path):
    again = write_demo_model(tmp_path / "again", seed=0)
    other = write_demo_model(tmp_path / "other", seed=1)
    for weights in ("sd15/unet/diffusion_pytorch_model.safetensors",
                    "controlnet/sdxl/depth/diffusion_pytorch_model.safetensors",
                    "ip-adapter/sd15/ip-adapter.safetensors",
                    "ip-adapter/sdxl/image_encoder/model.safetensors"):
        assert (again / weights).read_bytes() == (demo_dir / weights).read_bytes()
        assert (other / weights).read_bytes() != (demo_dir / weights).read_bytes()


# -- ControlNets ----------------------------------------------------------------------------------

def split(direction: str, size: int = 128) -> Image.Image:
    """A black/white control image split left|right or top/bottom."""
    a = np.zeros((size, size, 3), np.uint8)
    if direction == "lr":
        a[:, size // 2:] = 255
    else:
        a[size // 2:] = 255
    return Image.fromarray(a)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_controlnets_fit_their_family(pipes, controlnets, family):
    unet = pipes[family].unet
    weights = set()
    for kind in CONTROL_TYPES:
        cn = controlnets[family][kind]
        assert type(cn) is ControlNetModel
        assert cn.config.in_channels == 4
        assert tuple(cn.config.block_out_channels) == tuple(unet.config.block_out_channels)
        assert cn.config.cross_attention_dim == unet.config.cross_attention_dim
        assert cn.config.addition_embed_type == unet.config.addition_embed_type
        # the layers diffusers zero-initialises are not zero (else the ControlNet would be a no-op)
        assert cn.controlnet_cond_embedding.conv_out.weight.abs().sum() > 0
        assert all(conv.weight.abs().sum() > 0 for conv in cn.controlnet_down_blocks)
        assert cn.controlnet_mid_block.weight.abs().sum() > 0
        weights.add(cn.controlnet_mid_block.weight.sum().item())
    assert len(weights) == len(CONTROL_TYPES)  # every type has its own weights


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_controlnet_changes_the_picture(pipes, controlnets, family):
    cls = CONTROL_PIPELINES[family][0]

    def run(kind="canny", control="lr", scale=1.0, start=0.0, end=1.0):
        pipe = cls.from_pipe(pipes[family], controlnet=controlnets[family][kind], dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        image = pipe("a photo of a cat", image=split(control), num_inference_steps=4, height=128, width=128,
                     controlnet_conditioning_scale=scale, control_guidance_start=start, control_guidance_end=end,
                     generator=gen(1)).images[0]
        assert image.size == (128, 128)
        return pixels(image)

    on, off = run(), run(scale=0.0)
    assert np.isfinite(on).all()
    assert 0.0 < on.mean() < 255.0
    assert ((on == 0) | (on == 255)).mean() < 0.5  # not saturated
    assert np.abs(on - off).mean() > 3.0  # scale 1 vs 0
    assert np.abs(on - run(control="tb")).mean() > 3.0  # the control image matters
    assert np.abs(on - run(start=0.5)).mean() > 1.0  # guidance start/end matter
    assert np.abs(on - run(kind="depth")).mean() > 3.0  # two types differ for the same control image


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_controlnet_img2img_and_inpaint_pipelines(pipes, controlnets, family):
    _, img2img_cls, inpaint_cls = CONTROL_PIPELINES[family]
    cn = controlnets[family]["canny"]
    init, control = gradient(), split("lr")
    mask = np.zeros((128, 128), np.uint8)
    mask[32:96, 32:96] = 255
    common = dict(num_inference_steps=4, height=128, width=128)

    img2img = img2img_cls.from_pipe(pipes[family], controlnet=cn, dtype=torch.float32)
    img2img.set_progress_bar_config(disable=True)
    out = {scale: pixels(img2img("a photo of a cat", image=init, control_image=control, strength=0.6,
                                 controlnet_conditioning_scale=scale, generator=gen(1), **common).images[0])
           for scale in (0.0, 1.0)}
    assert np.abs(out[0.0] - out[1.0]).mean() > 1.0

    # both the 4-channel base UNet and the 9-channel inpaint UNet take the 4-channel ControlNet
    for base in (pipes[family], pipes[f"{family}-inpaint"]):
        inpaint = inpaint_cls.from_pipe(base, controlnet=cn, dtype=torch.float32)
        inpaint.set_progress_bar_config(disable=True)
        out = {scale: pixels(inpaint("a photo of a cat", image=init, mask_image=Image.fromarray(mask),
                                     control_image=control, controlnet_conditioning_scale=scale, generator=gen(1),
                                     **common).images[0])
               for scale in (0.0, 1.0)}
        assert np.abs(out[0.0] - out[1.0]).mean() > 1.0


def test_multi_controlnet(pipes, controlnets):
    cls = CONTROL_PIPELINES["sd15"][0]
    pipe = cls.from_pipe(pipes["sd15"], controlnet=[controlnets["sd15"]["canny"], controlnets["sd15"]["depth"]],
                         dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.controlnet, MultiControlNetModel)
    run = lambda scales: pixels(pipe("a photo of a cat", image=[split("lr"), split("tb")],  # noqa: E731
                                     controlnet_conditioning_scale=scales, num_inference_steps=2, height=128,
                                     width=128, generator=gen(1)).images[0])
    assert np.abs(run([1.0, 0.0]) - run([0.0, 1.0])).mean() > 3.0


# -- IP-Adapters ----------------------------------------------------------------------------------

def flat(colour) -> Image.Image:
    return Image.new("RGB", (64, 64), colour)


def load_ip_adapter(pipe, demo_dir, family):
    """The load call the demo promises: diffusers' own loader, offline, image encoder inside."""
    folder = demo_ip_adapters(demo_dir)[family]
    with offline():
        pipe.load_ip_adapter(folder, subfolder="", weight_name=IP_ADAPTER_WEIGHTS,
                             image_encoder_folder=os.path.join(folder, "image_encoder"))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_ip_adapter_references_steer_and_scale_zero_is_no_adapter(demo_dir, family):
    cls, kwargs = PIPELINES[family]
    with offline():  # a pipeline of its own: loading the adapter changes the UNet
        pipe = cls.from_pretrained(demo_dir / family, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    run = lambda **extra: pixels(pipe("a photo of a cat", num_inference_steps=4, height=128, width=128,  # noqa: E731
                                      generator=gen(1), **extra).images[0])
    plain = run()

    load_ip_adapter(pipe, demo_dir, family)
    assert type(pipe.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    size = pipe.image_encoder.config.image_size
    assert pipe.feature_extractor.crop_size["height"] == size
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0].image_embeds
    assert projection.in_features == pipe.image_encoder.config.projection_dim
    assert projection.out_features == 4 * pipe.unet.config.cross_attention_dim  # the plain IP-Adapter's 4 tokens

    pipe.set_ip_adapter_scale(1.0)
    red, blue = run(ip_adapter_image=flat((220, 30, 30))), run(ip_adapter_image=flat((30, 60, 220)))
    assert np.isfinite(red).all() and ((red == 0) | (red == 255)).mean() < 0.5
    assert np.abs(red - blue).mean() > 3.0  # the reference image matters
    assert np.abs(red - plain).mean() > 3.0

    # InstantStyle-like per-block scales on the demo UNet (one attention in down block 1, two in
    # up block 0): "style" = the second up-block attention, "composition" = the down-block one
    pipe.set_ip_adapter_scale({"up": {"block_0": [0.0, 1.0]}})
    style = run(ip_adapter_image=flat((220, 30, 30)))
    pipe.set_ip_adapter_scale({"down": {"block_1": [1.0]}})
    layout = run(ip_adapter_image=flat((220, 30, 30)))
    for one, other in ((style, plain), (layout, plain), (style, layout), (style, red), (layout, red)):
        assert np.abs(one - other).mean() > 1.0

    pipe.set_ip_adapter_scale(0.0)  # diffusers skips the adapter's attention: exactly the plain UNet
    assert np.array_equal(run(ip_adapter_image=flat((220, 30, 30))), plain)
    pipe.unload_ip_adapter()
    assert pipe.image_encoder is None and pipe.unet.encoder_hid_proj is None
    assert np.array_equal(run(), plain)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_ip_adapter_fits_the_inpaint_unet(demo_dir, family):
    cls, kwargs = PIPELINES[f"{family}-inpaint"]
    with offline():
        pipe = cls.from_pretrained(demo_dir / f"{family}-inpaint", **kwargs)
    pipe.set_progress_bar_config(disable=True)
    load_ip_adapter(pipe, demo_dir, family)
    mask = np.zeros((128, 128), np.uint8)
    mask[32:96, 32:96] = 255

    def run(colour):  # 4 steps: with 2 the SDXL inpaint pipeline barely leaves the init image
        return pixels(pipe("a photo of a cat", image=gradient(), mask_image=Image.fromarray(mask),
                           ip_adapter_image=flat(colour), num_inference_steps=4, height=128, width=128,
                           generator=gen(1)).images[0])

    assert np.abs(run((220, 30, 30)) - run((30, 60, 220))).mean() > 1.0


def test_use_demo_configures_the_ip_adapters(demo_dir):
    from backend.config import AdapterSpec, Config
    from backend.fixtures.demo_model import use_demo

    adapters = use_demo(Config(), demo_dir).ip_adapters
    assert sorted(adapters) == ["sd15", "sdxl"]
    for family, spec in adapters.items():
        assert isinstance(spec, AdapterSpec)
        assert spec.weights == os.path.join(demo_ip_adapters(demo_dir)[family], IP_ADAPTER_WEIGHTS)
        assert os.path.isfile(spec.weights) and os.path.isfile(os.path.join(spec.image_encoder, "config.json"))
