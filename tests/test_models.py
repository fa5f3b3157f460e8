"""Model sources, sharing of weights between modes, and the TOML config."""

import pytest
import torch
from safetensors.torch import save_file

from backend.config import Config, ConfigError, ModelSpec, load_config, scan_model_folder
from backend.engine.engine import Engine
from backend.engine.models import ModelError, ModelRegistry, configured_family, configured_native_size, detect_family
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


@pytest.mark.parametrize("toml, words", [
    ('[server]\nmodel_folder = ["/m"]\n', "no setting 'model_folder' (did you mean 'model_folders'?)"),
    ('[models.a]\nsource = "/m.safetensors"\ninpaitn = "/i.safetensors"\n', "models.a has no setting 'inpaitn' "
                                                                            "(did you mean 'inpaint'?)"),
    ('[lora]\nx = "/x.safetensors"\n', "unknown section [lora] (did you mean 'loras'?)"),
    # a string where a list belongs was read letter by letter: "/" first, the whole disk scanned
    ('[server]\nlora_folders = "/home/me/Lora"\n', "server.lora_folders must be a list of strings"),
    ('[server]\nport = "8760"\n', "server.port must be a whole number"),
    ('[server]\nallow_pickle = "false"\n', "server.allow_pickle must be true or false"),
    ('[limits]\nmax_steps = "many"\n', "limits.max_steps must be a whole number"),
    ('models = "x"\n', "models must be a table"),
    ('[models]\na = "/x.safetensors"\n', "models.a must be a table"),
    ('[models.a]\nsource = 5\n', "models.a.source must be a string"),
    ('[server]\nmodel_folders = ["C:\\Users\\me\\models"]\n', "write Windows paths in single quotes"),
    ('[server]\nmodel_folders = ["easel.toml"]\n', "is a file, not a folder: give the folder it is in, or name the "
                                                   "file alone with [models.NAME] source"),
])
def test_config_mistakes_are_named_with_what_to_write(tmp_path, toml, words):
    (tmp_path / "easel.toml").write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "easel.toml")
    assert words in str(caught.value)


def test_a_config_file_easel_cannot_read_says_what_it_is(tmp_path):
    # each was a traceback from `easel serve --config`
    (tmp_path / "configs").mkdir()
    with pytest.raises(ConfigError, match="is a folder: give the .toml file in it"):
        load_config(tmp_path / "configs")
    (tmp_path / "latin1.toml").write_bytes('[models.a]\nsource = "/mod\u00e8les/a.safetensors"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text .*save it as UTF-8"):
        load_config(tmp_path / "latin1.toml")
    # Notepad's byte order mark, and an accented path read as UTF-8 whatever the locale
    (tmp_path / "notepad.toml").write_bytes('\ufeff[models.a]\nsource = "/mod\u00e8les/a.safetensors"\n'.encode())
    assert load_config(tmp_path / "notepad.toml").models["a"].source == "/mod\u00e8les/a.safetensors"


@pytest.mark.parametrize("toml, words", [
    # each started a server that refused every job or connection, or a traceback once the model had loaded
    ("[server]\nport = 70000\n", "port must be from 1 to 65535 (0: any free port), got 70000"),
    ("[limits]\nmax_steps = 0\n", "limits.max_steps must be at least 1, got 0"),
    ("[limits]\nmax_batch = -2\n", "limits.max_batch must be at least 1, got -2"),
    ("[limits]\nmax_connections = 0\n", "limits.max_connections must be at least 1"),
    ("[limits]\nmax_queued = 0\n", "limits.max_queued must be at least 1"),
    ("[limits]\nmax_message_bytes = 100\n", "limits.max_message_bytes must be at least 1048576"),
    ("[limits]\nmax_outbox_bytes = -1\n", "limits.max_outbox_bytes must be at least 0, got -1"),
    ("[server]\nhello_timeout = 0\n", "server.hello_timeout must be more than 0"),
    ("[server]\nresume_seconds = -1\n", "server.resume_seconds must be at least 0"),
])
def test_numbers_no_server_can_run_with_stop_it_at_startup(tmp_path, toml, words):
    (tmp_path / "easel.toml").write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "easel.toml").check()
    assert words in str(caught.value)


def test_the_largest_and_zero_byte_budgets_still_serve(tmp_path):
    (tmp_path / "easel.toml").write_text("[server]\nport = 0\nshutdown_grace = 0\n\n[limits]\nmax_steps = 100000\n"
                                         "max_outbox_bytes = 0\nmax_kept_bytes = 0\n")
    config = load_config(tmp_path / "easel.toml").check()
    assert config.limits.max_steps == 100000 and config.limits.max_outbox_bytes == 0


def test_model_paths_expand_home_and_find_folders_beside_the_config(tmp_path, monkeypatch, demo_root):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "weights" / "sd15").mkdir(parents=True)
    (tmp_path / "easel.toml").write_text('[models.a]\nsource = "~/sd/model.safetensors"\nconfig = "weights/sd15"\n'
                                         '[models.hub]\nsource = "owner/repo"\n'
                                         '[controlnets.sd15]\ncanny = "~/cn/canny.safetensors"\n')
    config = load_config(tmp_path / "easel.toml")
    assert config.controlnets["sd15"]["canny"] == str(tmp_path / "home" / "cn" / "canny.safetensors")
    assert config.models["a"].source == str(tmp_path / "home" / "sd" / "model.safetensors")
    assert config.models["a"].config == str(tmp_path / "weights" / "sd15"), "a folder there, not a hub id"
    assert config.models["hub"].source == "owner/repo"


def _checkpoint_header(path, keys):
    save_file({key: torch.zeros(2, 2) for key in keys}, str(path))


def test_an_a1111_model_folder_as_users_have_it(tmp_path, demo_root, caplog):
    """What lies in a real models/Stable-diffusion: files dropped in the wrong folder, downloads cut short,
    links (one broken, one to a folder on another disk), capital suffixes, pickles. Only checkpoints are
    served; the rest is logged with what to do, and a job naming one is told why before `accepted`."""
    folder, other_disk = tmp_path / "Stable-diffusion", tmp_path / "big-disk" / "SDXL"
    folder.mkdir()
    other_disk.mkdir(parents=True)
    unet = "model.diffusion_model.input_blocks.0.0.weight"
    _checkpoint_header(folder / "v1-5 (pruned) [emaonly].safetensors", [unet])
    _checkpoint_header(folder / "Photon.SAFETENSORS", [unet])
    _checkpoint_header(other_disk / "juggernaut.safetensors", [unet, "conditioner.embedders.1.model.ln_final.weight"])
    (folder / "SDXL").symlink_to(other_disk)
    (folder / "gone.safetensors").symlink_to(tmp_path / "nowhere.safetensors")
    (folder / "v1-5 (pruned) [emaonly].yaml").write_text("model: {}\n")
    (folder / "v1-5 (pruned) [emaonly].preview.png").write_bytes(b"\x89PNG")
    (folder / "old.ckpt").write_bytes(b"pickle")
    (folder / "vae-ft-mse-840000.safetensors").write_bytes((demo_root / "sd15" / "vae" /
                                                           "diffusion_pytorch_model.safetensors").read_bytes())
    (folder / "add_detail.safetensors").write_bytes((demo_root / "loras" / "demo-lora.safetensors").read_bytes())
    (folder / "easynegative.safetensors").write_bytes((demo_root / "embeddings" /
                                                      "demo-embedding.safetensors").read_bytes())
    whole = (folder / "v1-5 (pruned) [emaonly].safetensors").read_bytes()
    (folder / "downloading.safetensors").write_bytes(whole[:len(whole) - 8])
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "sd15").symlink_to(demo_root / "sd15")  # a diffusers folder
    # the SDXL folder listed again on its own (and reached through the link): each file is served once; a
    # ComfyUI folder with another file of a name already taken is logged
    comfy = tmp_path / "ComfyUI" / "checkpoints"
    comfy.mkdir(parents=True)
    _checkpoint_header(comfy / "Photon.safetensors", [unet, "another.weight"])
    (tmp_path / "easel.toml").write_text(f'[server]\nport = 0\nmodel_folders = ["{folder}", "{other_disk}", '
                                         f'"{comfy}"]\n')
    with caplog.at_level("WARNING", logger="backend.config"):
        config = load_config(tmp_path / "easel.toml").check()
    assert sorted(config.models) == ["Photon", "SDXL/juggernaut", "sd15", "v1-5 (pruned) [emaonly]"]
    assert configured_family(config.models["SDXL/juggernaut"]) == "sdxl"
    why = config.skipped_models
    assert "is a VAE" in why["vae-ft-mse-840000"] and "is a LoRA" in why["add_detail"]
    assert "embedding_folders" in why["easynegative"] and "cut short" in why["downloading"]
    assert "is empty" in why["empty"]
    logged = caplog.text
    assert "gone.safetensors is a link to" in logged and "allow_pickle = true" in logged
    assert f"model Photon: {comfy / 'Photon.safetensors'} is not served: {folder / 'Photon.SAFETENSORS'}" in logged
    (folder / "Photon.ckpt").write_bytes(b"pickle")  # the same weights before conversion
    with_pickles = scan_model_folder(folder, allow_pickle=True)
    assert with_pickles["Photon"].source.endswith("Photon.SAFETENSORS") and with_pickles["old"].source.endswith(".ckpt")
    (tmp_path / "default.toml").write_text(f'[server]\nmodel_folders = ["{folder}"]\ndefault_model = "add_detail"\n')
    with pytest.raises(ConfigError, match="default_model: model 'add_detail' cannot be used: .* is a LoRA"):
        load_config(tmp_path / "default.toml").check()
    (tmp_path / "default.toml").write_text(f'[server]\nmodel_folders = ["{folder}"]\ndefault_model = "photon"\n')
    with pytest.raises(ConfigError, match="did you mean 'Photon'"):
        load_config(tmp_path / "default.toml").check()
    (tmp_path / "default.toml").write_text(f'[server]\nmodel_folders = ["{folder}"]\n[presets.x]\nmodel = "photon"\n')
    with pytest.raises(ConfigError, match="presets.x.model: no model named 'photon' \\(did you mean 'Photon'"):
        load_config(tmp_path / "default.toml").check()
    with ServerThread(config, Engine(ModelRegistry(config, torch.device("cpu"), torch.float32))) as server, \
            Client(server.url) as client:
        events = []
        with pytest.raises(EaselError) as caught:
            client.run("generate", model="vae-ft-mse-840000", prompt="x", steps=1, width=64, height=64,
                       on_event=events.append)
        assert (caught.value.code, caught.value.field) == ("unknown_model", "model") and not events
        assert "is a VAE alone" in str(caught.value)
        with pytest.raises(EaselError) as caught:
            client.run("generate", model="photon", prompt="x", steps=1, width=64, height=64)
        assert "did you mean 'Photon'?" in str(caught.value)
        result = client.run("generate", model="sd15", prompt="x", steps=1, width=64, height=64, seed=1)
        assert result.parameters["model"] == "sd15", "the server keeps serving"


def test_a_checkpoints_folder_given_as_a_source_names_the_file_to_give(tmp_path):
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    _checkpoint_header(folder / "v1-5-pruned-emaonly.safetensors", ["model.diffusion_model.out.0.weight"])
    with pytest.raises(ModelError) as caught:
        ModelRegistry(Config(models={"m": ModelSpec("m", str(folder))}), torch.device("cpu"), torch.float32).get("m")
    assert f"give the file: {folder / 'v1-5-pruned-emaonly.safetensors'}" in caught.value.message


def test_a_model_whose_weights_went_away_says_so(tmp_path, demo_root):
    gone = tmp_path / "moved.safetensors"
    config = Config(models={"mine": ModelSpec("mine", str(gone))})
    with pytest.raises(ModelError) as caught:
        ModelRegistry(config, torch.device("cpu"), torch.float32).get("mine")
    assert caught.value.code == "model_load_failed"
    assert f"{gone} does not exist" in caught.value.message and "pick another model" in caught.value.message


def test_a_hub_model_not_in_the_cache_offline_says_what_to_do():
    # was diffusers' "... model_index.json", or "check out the root cause in the stacktrace above" (none shown)
    config = Config(models={"xl": ModelSpec("xl", "owner/not-downloaded")})
    with pytest.raises(ModelError) as caught:
        ModelRegistry(config, torch.device("cpu"), torch.float32).get("xl")
    assert "read as a hub id" in caught.value.message and "connect once to download it" in caught.value.message
    assert "stacktrace" not in caught.value.message


def test_serve_refuses_model_folders_with_nothing_to_serve(tmp_path, capsys):
    """Rather than fetching a 4 GB hub model, or the demo, that nobody asked for."""
    from backend.cli import main

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "old.ckpt").write_bytes(b"pickle")
    (folder / "vae.safetensors").write_bytes(b"")
    (tmp_path / "easel.toml").write_text(f'[server]\nport = 0\nmodel_folders = ["{folder}"]\n')
    assert main(["serve", "--config", str(tmp_path / "easel.toml")]) == 2
    said = capsys.readouterr().err
    assert "no model found in model_folders" in said and "vae: " in said and "allow_pickle" in said


def test_serve_names_configured_weights_that_are_not_there(tmp_path, capsys):
    """A typo in a pasted config stops the server at once, not its first job (models load lazily)."""
    from backend.cli import main

    (tmp_path / "easel.toml").write_text('[server]\nport = 0\n[models.sd15]\nsource = "./v1-5-pruned.safetensors"\n'
                                         'preview = "madebyollin/taesd"\n[upscalers]\nesrgan = "/nowhere/4x.pth"\n')
    assert main(["serve", "--config", str(tmp_path / "easel.toml")]) == 2
    said = capsys.readouterr().err
    assert f"models.sd15.source: {tmp_path / 'v1-5-pruned.safetensors'} does not exist" in said
    assert "upscalers.esrgan: /nowhere/4x.pth does not exist" in said and "taesd" not in said, "hub ids are no paths"


def test_files_added_and_removed_while_serving_show_at_the_next_hello_or_models(tmp_path, demo_root):
    """A painter downloads a checkpoint or a LoRA into the A1111 folders with the server running: a host's
    refresh (`models`) or a new connection lists it, and a job may name it (even before either); a deleted
    one goes, unless it is loaded."""
    models, loras = tmp_path / "Stable-diffusion", tmp_path / "Lora"
    models.mkdir()
    loras.mkdir()
    unet = "model.diffusion_model.input_blocks.0.0.weight"
    _checkpoint_header(models / "first.safetensors", [unet])
    (tmp_path / "plain.toml").write_text(f'[server]\nmodel_folders = ["{models}"]\n')
    plain = load_config(tmp_path / "plain.toml")
    _checkpoint_header(models / "a-new-one.safetensors", [unet])
    Engine(ModelRegistry(plain, torch.device("cpu"), torch.float32)).refresh_folders()
    assert list(plain.models) == ["a-new-one", "first"] and plain.default == "first", "the default stays put"
    (models / "a-new-one.safetensors").unlink()
    (tmp_path / "easel.toml").write_text(f'[server]\nport = 0\nmodel_folders = ["{models}"]\n'
                                         f'lora_folders = ["{loras}"]\ndefault_model = "demo"\n'
                                         f'[models.demo]\nsource = "{demo_root / "sd15"}"\n')
    config = load_config(tmp_path / "easel.toml").check()
    with ServerThread(config, Engine(ModelRegistry(config, torch.device("cpu"), torch.float32))) as server, \
            Client(server.url) as client:
        assert [m["name"] for m in client.models()["models"]] == ["demo", "first"]
        _checkpoint_header(models / "second.safetensors", [unet])
        (models / "first.safetensors").unlink()
        (loras / "ink.safetensors").write_bytes((demo_root / "loras" / "demo-lora.safetensors").read_bytes())
        reply = client.models()
        assert [m["name"] for m in reply["models"]] == ["demo", "second"]
        assert reply["loras"] == [{"name": "ink", "family": "sd15"}]
        result = client.run("generate", prompt="a house <lora:ink:0.5>", steps=1, width=64, height=64)
        assert result.parameters["loras"] == [{"name": "ink", "weight": 0.5}]
        # named before any refresh lists it; once loaded, it runs on without its file
        (models / "diffusers").symlink_to(demo_root / "sd15-vpred")
        client.run("generate", model="diffusers", prompt="x", steps=1, width=64, height=64)
        (models / "diffusers").unlink()
        assert "diffusers" in [m["name"] for m in client.models()["models"]]
        client.run("generate", model="diffusers", prompt="x", steps=1, width=64, height=64)
        with pytest.raises(EaselError) as caught:
            client.run("generate", model="first", prompt="x", steps=1, width=64, height=64)
        assert caught.value.code == "unknown_model"
        (loras / "ink.safetensors").unlink()
        with Client(server.url) as other:
            assert other.welcome["capabilities"]["loras"] == []
        loras.rename(tmp_path / "unmounted")  # the disk it is on went away: what was found stays
        assert [m["name"] for m in client.models()["models"]] == ["demo", "second", "diffusers"]


def test_a_configured_source_that_is_no_checkpoint_says_what_it_is(tmp_path, demo_root):
    vae = tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"
    vae.write_bytes((demo_root / "sd15" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes())
    config = Config(models={"mine": ModelSpec("mine", str(vae))})
    with pytest.raises(ModelError) as caught:
        ModelRegistry(config, torch.device("cpu"), torch.float32).get("mine")
    assert caught.value.code == "model_load_failed" and "is a VAE alone, not a whole model" in caught.value.message


@pytest.mark.parametrize("path, kind", [
    ("loras/demo-lora.safetensors", "lora"), ("loras/demo-xl-lora-diffusers.safetensors", "lora"),
    ("embeddings/demo-embedding.safetensors", "embedding"), ("embeddings/demo-embedding-xl.safetensors", "embedding"),
    ("sd15/vae/diffusion_pytorch_model.safetensors", "vae"), ("flux-comfy/vae/ae.safetensors", "vae"),
    ("flux-comfy/text_encoders/clip_l.safetensors", "text_encoder"),
    ("flux-comfy/text_encoders/t5xxl.safetensors", "text_encoder"),
    ("flux-comfy/diffusion_models/flux-demo.safetensors", "checkpoint"),
])
def test_what_a_weights_file_holds_is_read_from_its_header(demo_root, path, kind):
    from backend.model_files import kind_of, read_header

    assert kind_of(read_header(demo_root / path)[0]) == kind


def test_a_family_or_inpaint_unet_the_weights_contradict_is_said_plainly(tmp_path):
    """`family = "sdxl"` on an SD1.5 file "loaded" and every job on it ended with an internal error; an
    `inpaint` that is a base model failed with diffusers' shape-mismatch traceback."""
    sd15 = tmp_path / "v1-5.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(2)}, str(sd15))
    (tmp_path / "easel.toml").write_text(f'[models.xl]\nsource = "{sd15}"\nfamily = "sdxl"\n')
    with pytest.raises(ConfigError, match=r"models.xl.family is 'sdxl', but .* is a sd15 checkpoint, not sdxl"):
        load_config(tmp_path / "easel.toml")
    config = Config(models={"m": ModelSpec("m", str(sd15), "sd15", inpaint=str(sd15))})
    registry = ModelRegistry(config, torch.device("cpu"), torch.float32)
    with pytest.raises(ModelError) as caught:
        registry._load_unet(str(sd15), config.models["m"])
    assert "has 4 input channels; a dedicated inpaint model has 9 (this is a base model" in caught.value.message


def test_a_header_that_is_json_but_no_safetensors_header_is_left_out(tmp_path):
    import json
    import struct

    from backend.config import scan_lora_folder

    for name, header in (("offsets", {"x": {"data_offsets": 5}}), ("list", [1, 2]), ("number", {"x": 3})):
        data = json.dumps(header).encode()
        (tmp_path / f"{name}.safetensors").write_bytes(struct.pack("<Q", len(data)) + data + bytes(8))
    skipped = {}
    assert scan_model_folder(tmp_path, skipped=skipped) == {} and set(skipped) == {"offsets", "list", "number"}
    assert scan_lora_folder(tmp_path) == {}


def test_a_folder_checkpoint_that_needs_its_configuration_says_how_to_give_it(tmp_path):
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    _checkpoint_header(folder / "photon.safetensors", ["model.diffusion_model.out.0.weight",
                                                       "cond_stage_model.transformer.text_model.x.weight"])
    (tmp_path / "easel.toml").write_text(f'[server]\nmodel_folders = ["{folder}"]\n')
    config = load_config(tmp_path / "easel.toml")
    with pytest.raises(ModelError) as caught:
        ModelRegistry(config, torch.device("cpu"), torch.float32).get("photon")
    assert f'[models."photon"] with source = "{folder / "photon.safetensors"}" and `config`' in caught.value.message
