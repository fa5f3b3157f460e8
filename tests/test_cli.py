"""The ``easel`` command as a user runs it: serve, run, demo, demo-model."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.engine import masks
from conftest import picture, rect_mask
from shared.client import Client

EASEL = Path(sys.executable).with_name("easel")
COMMAND = [str(EASEL)] if EASEL.exists() else [sys.executable, "-m", "backend.cli"]


def easel(*args, env=None, timeout=300):
    return subprocess.run(COMMAND + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def inputs(tmp_path):
    image = picture(400, 300)
    mask = rect_mask(image.size, (250, 40, 330, 120))
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    return image, mask, tmp_path


def test_run_inpaint_writes_the_picture_with_only_the_mask_changed(server, inputs):
    image, mask, folder = inputs
    done = easel("run", "inpaint", "--prompt", "a window", "--image", folder / "in.png", "--mask",
                 folder / "mask.png", "--seed", 4, "--steps", 4, "--out", folder / "out.png", "--server", server.url)
    assert done.returncode == 0, done.stderr
    assert "step 4/4" in done.stderr
    out = np.asarray(Image.open(folder / "out.png"))
    source = np.asarray(image)
    reach = masks.shape_mask(np.asarray(mask), 8, 16) > 0
    assert out.shape == source.shape
    assert (out[~reach] == source[~reach]).all()
    assert np.abs(out[np.asarray(mask) > 0].astype(int) - source[np.asarray(mask) > 0]).mean() > 5


def test_run_batch_writes_numbered_files(server, inputs):
    _, _, folder = inputs
    done = easel("run", "img2img", "--prompt", "x", "--image", folder / "in.png", "--strength", 0.5, "--steps", 4,
                 "--batch", 2, "--seed", 9, "--out", folder / "v.png", "--server", server.url)
    assert done.returncode == 0, done.stderr
    first, second = (np.asarray(Image.open(folder / f"v-{i}.png")) for i in (1, 2))
    assert first.shape == (300, 400, 3) and not (first == second).all()
    assert "seed 9" in done.stdout and "seed 10" in done.stdout


def test_run_reports_the_servers_error(server, inputs):
    _, _, folder = inputs
    done = easel("run", "inpaint", "--prompt", "x", "--image", folder / "in.png", "--mask", folder / "mask.png",
                 "--strength", 0.01, "--out", folder / "o.png", "--server", server.url)
    assert done.returncode != 0
    assert "no denoising step" in done.stderr and "too_few_steps" in done.stderr
    assert not (folder / "o.png").exists()
    down = easel("run", "generate", "--prompt", "x", "--out", folder / "o.png", "--server",
                 f"ws://127.0.0.1:{free_port()}/")
    assert down.returncode != 0 and "cannot reach" in down.stderr


def wait_for_server(process, port, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("server did not start")


def serve(*args, env=None):
    port = free_port()
    process = subprocess.Popen(COMMAND + ["serve", "--port", str(port), *map(str, args)], stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    wait_for_server(process, port)
    return process, f"ws://127.0.0.1:{port}/"


def stop(process):
    process.terminate()
    process.wait(30)
    return process.stderr.read()


def test_serve_without_models_falls_back_to_the_demo_with_a_warning(demo_root, tmp_path):
    (tmp_path / "demo-model").symlink_to(demo_root)
    process, url = serve(env={"EASEL_HOME": str(tmp_path)})
    try:
        with Client(url) as client:
            result = client.run("generate", prompt="x", steps=2, width=64, height=64, seed=1)
        assert result.images[0].image.width == 64
    finally:
        log = stop(process)
    assert "demo model" in log


def test_demo_model_command_writes_a_servable_config(tmp_path):
    done = easel("demo-model", tmp_path / "demo")
    assert done.returncode == 0, done.stderr
    process, url = serve("--config", tmp_path / "demo" / "easel.toml")
    try:
        with Client(url) as client:
            assert {m["name"] for m in client.models()["models"]} == {"demo", "demo-base", "demo-xl"}
            assert "canny" in client.welcome["capabilities"]["control_types"]
    finally:
        stop(process)


def test_serve_with_a_model_that_cannot_load_is_an_error(tmp_path):
    done = easel("serve", "--port", free_port(), "--model", tmp_path / "missing-folder", timeout=120)
    assert done.returncode != 0
    assert "could not be loaded" in done.stderr


def test_demo_command_writes_results_and_a_sheet(demo_root, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "demo-model").symlink_to(demo_root)
    done = easel("demo", "--out", tmp_path / "out", env={"EASEL_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    for name in ("sample.png", "mask.png", "inpaint.png", "img2img.png", "sheet.png"):
        assert (tmp_path / "out" / name).is_file(), name
    sample, inpainted = (np.asarray(Image.open(tmp_path / "out" / n).convert("RGB")) for n in ("sample.png", "inpaint.png"))
    assert not (sample == inpainted).all()
    assert (sample[-20:] == inpainted[-20:]).all(), "the bottom of the picture is far from the mask"


def test_run_turns_phone_photos_upright_and_reads_any_colour_mode(server, tmp_path):
    photo = Image.new("RGB", (120, 80), "red")
    exif = photo.getexif()
    exif[0x0112] = 6  # stored sideways: shows as 80 x 120
    photo.save(tmp_path / "phone.jpg", exif=exif)
    Image.new("RGB", (96, 64), "blue").convert("CMYK").save(tmp_path / "print.jpg")
    done = easel("run", "img2img", "--prompt", "x", "--image", tmp_path / "phone.jpg", "--strength", 0.5,
                 "--steps", 2, "--out", tmp_path / "phone-out", "--server", server.url)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "phone-out.png").size == (80, 120)
    done = easel("run", "img2img", "--prompt", "x", "--image", tmp_path / "print.jpg", "--strength", 0.5,
                 "--steps", 2, "--out", tmp_path / "print-out.jpg", "--server", server.url)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "print-out.jpg").size == (96, 64)


def test_run_checks_the_output_path_before_the_job(server, tmp_path):
    image = picture(64, 64)
    image.save(tmp_path / "in.png")
    for out, why in ((tmp_path / "missing" / "o.png", "does not exist"), (tmp_path / "o.xyz", "not a picture")):
        done = easel("run", "img2img", "--prompt", "x", "--image", tmp_path / "in.png", "--out", out,
                     "--server", server.url)
        assert done.returncode == 2 and why in done.stderr and "Traceback" not in done.stderr


def test_run_with_control_units(server, inputs):
    image, mask, folder = inputs
    lines = Image.new("RGB", (200, 150), "black")
    lines.paste((255, 255, 255), (0, 0, 100, 150))
    lines.save(folder / "lines.png")
    common = ["run", "img2img", "--prompt", "x", "--image", folder / "in.png", "--strength", 0.8, "--steps", 4,
              "--seed", 1, "--server", server.url]
    plain = easel(*common, "--out", folder / "plain.png")
    steered = easel(*common, "--control", f"canny:{folder / 'lines.png'}:1.2:0:0.8",
                    "--control", "canny:input:0.8:pre", "--out", folder / "steered.png")
    assert plain.returncode == 0 and steered.returncode == 0, steered.stderr
    assert not (np.asarray(Image.open(folder / "plain.png")) == np.asarray(Image.open(folder / "steered.png"))).all()
    bad = easel(*common, "--control", "canny", "--out", folder / "bad.png")
    assert bad.returncode == 2 and "TYPE:IMAGE" in bad.stderr


def test_preprocess_command_writes_the_map(server, inputs):
    _, _, folder = inputs
    done = easel("preprocess", "canny", folder / "in.png", folder / "edges.png", "--server", server.url)
    assert done.returncode == 0, done.stderr
    assert Image.open(folder / "edges.png").size == (400, 300)


def test_run_with_references(server, inputs):
    _, _, folder = inputs
    Image.new("RGB", (64, 64), "red").save(folder / "red.png")
    Image.new("RGB", (64, 64), "blue").save(folder / "blue.png")
    common = ["run", "img2img", "--prompt", "x", "--image", folder / "in.png", "--strength", 0.8, "--steps", 4,
              "--seed", 1, "--server", server.url]
    outputs = {}
    for name, extra in (("plain", []), ("zero", ["--reference", f"{folder / 'red.png'}:0"]),
                        ("red", ["--reference", f"{folder / 'red.png'}:1:style",
                                 "--reference", f"{folder / 'blue.png'}:0.5"])):
        done = easel(*common, *extra, "--out", folder / f"{name}.png")
        assert done.returncode == 0, done.stderr
        outputs[name] = np.asarray(Image.open(folder / f"{name}.png"))
    assert (outputs["zero"] == outputs["plain"]).all()
    assert not (outputs["red"] == outputs["plain"]).all()


def test_control_and_reference_specs_allow_colons_in_paths(tmp_path):
    from backend.cli import _control_unit, _reference

    folder = tmp_path / "C:" / "maps"  # a path with a colon, as every Windows path has
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32), "white").save(folder / "lines.png")
    path = folder / "lines.png"
    unit = _control_unit(f"depth:{path}:0.5:0.1:0.9:pre")
    assert (unit["type"], unit["preprocess"], unit["scale"], unit["start"], unit["end"]) == \
        ("depth", "on", 0.5, 0.1, 0.9)
    assert unit["image"].width == 32
    assert "scale" not in _control_unit(f"canny:{path}") and _control_unit(f"canny:{path}:1.5")["scale"] == 1.5
    reference = _reference(f"{path}:0.7:face")
    assert (reference["weight"], reference["mode"], reference["image"].height) == (0.7, "face", 32)
    assert _reference(f"{path}:style") == {"image": reference["image"], "mode": "style"}
    assert _reference(str(path)).keys() == {"image"}


def test_python_m_backend_cli_runs_the_command():
    """`python -m backend.cli` is the command (every subcommand's function is defined before it runs)."""
    root = Path(__file__).resolve().parents[1]
    for args, expected in ((["--help"], "demo-model"), (["run", "--help"], "--grow"),
                           (["preprocess", "--help"], "--resolution")):
        done = subprocess.run([sys.executable, "-m", "backend.cli", *args], capture_output=True, text=True,
                              cwd=root, timeout=120)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout and "Traceback" not in done.stderr
