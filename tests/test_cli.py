"""The ``easel`` command as a user runs it: serve, run, preprocess, demo, demo-model."""

import ctypes.util
import dataclasses
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from backend.engine import masks
from backend.engine.passes import near_native
from backend.server import ServerThread
from conftest import JobsAhead, picture, rect_mask
from shared.client import Client
from test_imaging import krita_profile

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


def test_run_instruct_with_a_mask_changes_only_the_mask(server, inputs):
    image, mask, folder = inputs
    done = easel("run", "instruct", "--prompt", "make it winter", "--image", folder / "in.png", "--mask",
                 folder / "mask.png", "--image-guidance", 1.5, "--seed", 4, "--steps", 3, "--out", folder / "out.png",
                 "--server", server.url)
    assert done.returncode == 0, done.stderr
    assert "step 3/3" in done.stderr
    out, source = np.asarray(Image.open(folder / "out.png")), np.asarray(image)
    reach = masks.shape_mask(np.asarray(mask), 8, 16) > 0
    assert out.shape == source.shape and (out[~reach] == source[~reach]).all()
    assert np.abs(out[np.asarray(mask) > 0].astype(int) - source[np.asarray(mask) > 0]).mean() > 5


def test_run_batch_writes_numbered_files(server, inputs):
    _, _, folder = inputs
    done = easel("run", "img2img", "--prompt", "x", "--image", folder / "in.png", "--strength", 0.5, "--steps", 4,
                 "--batch", 2, "--seed", 9, "--out", folder / "v.png", "--server", server.url)
    assert done.returncode == 0, done.stderr
    first, second = (np.asarray(Image.open(folder / f"v-{i}.png")) for i in (1, 2))
    assert first.shape == (300, 400, 3) and not (first == second).all()
    assert "seed 9" in done.stdout and "seed 10" in done.stdout


def test_run_counts_down_the_jobs_ahead_while_it_waits(server, tmp_path):
    # the count said at `accepted` stayed until the job started: behind a long queue `easel run` looked stuck
    with JobsAhead(server.url, 2) as ahead:
        # (python -m: this checkout's code, where an installed `easel` may be another checkout's)
        process = subprocess.Popen([sys.executable, "-m", "backend.cli", "run", "generate", "--prompt", "x", "--steps",
                                    "2", "--width", "64", "--height", "64", "--out", str(tmp_path / "out.png"),
                                    "--server", server.url], cwd=Path(__file__).parents[1], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        said = []
        for line in process.stderr:
            if "ahead" in line:
                said.append(line.strip())
                ahead.pass_one()  # the queue moves: the next count must show it
            if not ahead.jobs:
                break
        _, rest = process.communicate(timeout=120)
    assert said == ["easel: waiting: 2 jobs ahead in the server's queue",
                    "easel: waiting: 1 job ahead in the server's queue"]
    assert process.returncode == 0, rest
    assert "step 2/2" in rest and "ahead" not in rest


def test_run_reports_the_servers_error(server, inputs):
    _, _, folder = inputs
    done = easel("run", "inpaint", "--prompt", "x", "--image", folder / "in.png", "--mask", folder / "mask.png",
                 "--model", "nope", "--out", folder / "o.png", "--server", server.url)
    assert done.returncode == 1
    assert "--model: no model named 'nope'" in done.stderr and "[unknown_model]" in done.stderr
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
        maps = open(f"/proc/{process.pid}/maps").read() if sys.platform.startswith("linux") else ""
    finally:
        log = stop(process)
    assert "demo model" in log
    # a new user took the notices libraries print about each other's versions at import for faults
    foreign = [line for line in log.splitlines() if not re.match(r"(INFO|WARNING|ERROR) (easel|backend|shared)", line)]
    assert not foreign, foreign
    if ctypes.util.find_library("jemalloc") and sys.platform.startswith("linux"):
        # the same process restarted itself on jemalloc (backend/memory.py): a never-reading client's 10 jobs
        # grew it by about +45 MiB at the peak instead of 100-130 (bench/slow_reader.py)
        assert "/libjemalloc" in maps and "memory: jemalloc, pages unused for 2 s given back" in log


def test_serve_lets_in_the_web_pages_of_an_allowed_origin(demo_root, tmp_path):
    # A web app's developer had to write a config file just to let a page of theirs connect.
    (tmp_path / "demo-model").symlink_to(demo_root)
    env = {"EASEL_HOME": str(tmp_path)}
    refused = easel("serve", "--port", free_port(), "--allow-origin", "http://localhost:5173/", env=env, timeout=120)
    assert refused.returncode == 2 and "allowed_origins" in refused.stderr, "a trailing slash would never match"
    process, url = serve("--allow-origin", "http://localhost:5173", env=env)
    try:
        with connect(url, origin="http://localhost:5173") as ws:
            ws.send(json.dumps({"type": "hello", "protocol": 1}))
            assert json.loads(ws.recv(timeout=30))["type"] == "welcome"
        with connect(url, origin="http://localhost:5174") as ws:
            with pytest.raises(ConnectionClosed) as caught:
                ws.recv(timeout=30)
        assert caught.value.rcvd.code == 1008
    finally:
        stop(process)


def test_ctrl_c_while_serve_starts_ends_without_a_traceback(demo_root, tmp_path):
    # a painter who gives up while the model loads got a screen of KeyboardInterrupt traceback (status -2)
    import signal

    (tmp_path / "demo-model").symlink_to(demo_root)
    process = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve", "--demo", "--port", str(free_port())],
                               cwd=Path(__file__).parents[1], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "EASEL_HOME": str(tmp_path)},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    said = []
    while not said or "preparing the demo model" not in said[-1]:  # serve has begun; torch is still to load
        said.append(process.stderr.readline())
        assert said[-1], said
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    err = "".join(said) + err
    assert process.returncode == 130, err
    assert "easel: interrupted while starting: the server did not start" in err and "Traceback" not in err, err


def test_ctrl_c_while_the_command_loads_ends_without_a_traceback(demo_root, tmp_path):
    # The console script's first second is the import of the command line (numpy, Pillow, argparse's
    # translations): a Ctrl+C there printed a traceback of the import machinery. Run as pyproject's
    # entry point runs it; it says "loading" as the import reaches Pillow, so the signal lands inside it.
    import signal

    (tmp_path / "demo-model").symlink_to(demo_root)
    script = ("import sys; from backend.entry import main; said = []\n"
              "def hook(event, args):\n"
              "    if event == 'import' and args[0] == 'PIL' and not said:\n"
              "        said.append(print('loading', flush=True))\n"
              "sys.addaudithook(hook); sys.exit(main())")
    process = subprocess.Popen([sys.executable, "-c", script, "serve", "--demo", "--port", str(free_port())],
                               cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "EASEL_HOME": str(tmp_path),
                                    "EASEL_MALLOC": "system"})  # (no restart on jemalloc: one process throughout)
    assert process.stdout.readline() == "loading\n"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "easel: interrupted" in err and "Traceback" not in err, err


def test_serve_with_a_cache_it_cannot_write_says_where_and_what_to_set(tmp_path, monkeypatch, capsys):
    from backend.cli import main

    (tmp_path / "home").write_text("a file, not a folder")
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    assert main(["serve", "--demo", "--port", "0"]) == 2  # was an OSError traceback
    err = capsys.readouterr().err
    assert f"cannot write the demo model to the cache ({tmp_path / 'home'}" in err
    assert "set EASEL_HOME to a folder you can write to" in err


def test_a_port_in_use_or_an_address_not_here_says_what_to_change(demo_root, tmp_path, capsys):
    from backend.cli import main

    (tmp_path / "easel.toml").write_text(f'[models.demo]\nsource = "{demo_root / "sd15"}"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--config", str(tmp_path / "easel.toml"), "--port", str(port)]) == 1
    # was "[Errno 98] error while attempting to bind on address ('127.0.0.1', N): address already in use"
    assert (f"easel: cannot listen on 127.0.0.1:{port}: the port is in use (another easel serve, or another "
            "program): stop it or choose another --port") in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "easel.toml"), "--host", "192.0.2.123", "--token", "t"]) == 1
    assert "192.0.2.123 is not an address of this machine" in capsys.readouterr().err


def test_a_device_that_is_not_here_stops_serve_saying_what_to_use(demo_root, tmp_path, capsys):
    """It was a torch traceback ("gpu"), or a server whose every job failed ("cuda" without a GPU)."""
    import torch

    from backend.cli import main

    (tmp_path / "easel.toml").write_text(f'[server]\ndevice = "gpu"\n[models.demo]\nsource = "{demo_root / "sd15"}"\n')
    assert main(["serve", "--config", str(tmp_path / "easel.toml"), "--port", "0"]) == 2
    assert "device 'gpu' is not one Easel runs on: use auto, cuda" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["serve", "--config", str(tmp_path / "easel.toml"), "--port", "0", "--device", "cuda"]) == 2
        assert "this torch sees 0 CUDA GPU(s)" in capsys.readouterr().err


def test_demo_commands_name_a_folder_they_cannot_write(tmp_path, monkeypatch, capsys):
    from backend.cli import main

    (tmp_path / "file").write_text("not a folder")
    assert main(["demo-model", str(tmp_path / "file" / "demo")]) == 1  # both were an OSError traceback
    assert f"easel: cannot write the model to {tmp_path / 'file' / 'demo'}" in capsys.readouterr().err
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "file"))
    assert main(["demo", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "the demo model to the cache ($EASEL_HOME, else ~/.cache/easel); make both writable" in err


def test_demo_model_command_writes_a_servable_config(tmp_path):
    done = easel("demo-model", tmp_path / "demo")
    assert done.returncode == 0, done.stderr
    process, url = serve("--config", tmp_path / "demo" / "easel.toml")
    try:
        with Client(url) as client:
            assert {m["name"] for m in client.models()["models"]} >= {"demo", "demo-base", "demo-xl", "demo-instruct",
                                                                      "demo-vpred"}
            assert "canny" in client.welcome["capabilities"]["control_types"]
    finally:
        stop(process)


def test_serve_with_a_model_that_cannot_load_is_an_error(tmp_path):
    done = easel("serve", "--port", free_port(), "--model", tmp_path / "missing-folder", timeout=120)
    assert done.returncode != 0
    assert "could not be loaded" in done.stderr


def test_serve_names_a_model_path_that_is_not_there(tmp_path, monkeypatch, capsys):
    """Not diffusers' "does not appear to have a file named model_index.json" (it took the path for a hub id)."""
    from backend.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--port", "0", "--model", "v1-5-pruned.safetensors"]) == 2
    assert f"there is no such file or folder ({tmp_path / 'v1-5-pruned.safetensors'})" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--demo", "--model", "v1-5-pruned.safetensors"]) == 2
    assert "--model and --demo each choose what to serve: give one of them" in capsys.readouterr().err


def test_demo_command_writes_results_and_a_sheet(demo_root, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "demo-model").symlink_to(demo_root)
    done = easel("demo", "--out", tmp_path / "out", env={"EASEL_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    for name in ("sample.png", "mask.png", "inpaint.png", "img2img.png", "sheet.png"):
        assert (tmp_path / "out" / name).is_file(), name
    sample, inpainted = (np.asarray(Image.open(tmp_path / "out" / name).convert("RGB"))
                         for name in ("sample.png", "inpaint.png"))
    assert not (sample == inpainted).all()
    assert (sample[-20:] == inpainted[-20:]).all(), "the bottom of the picture is far from the mask"


def test_run_turns_phone_photos_upright_and_reads_any_colour_mode(server, tmp_path):
    photo = Image.new("RGB", (120, 80), "red")
    exif = photo.getexif()
    exif[0x0112] = 6  # stored sideways: shows as 80 x 120
    wide = krita_profile("ClayRGB-elle-V2-g22.icc")  # an Adobe RGB-compatible camera photo
    photo.save(tmp_path / "phone.jpg", exif=exif, icc_profile=wide)
    Image.new("RGB", (96, 64), "blue").convert("CMYK").save(tmp_path / "print.jpg")
    done = easel("run", "img2img", "--prompt", "x", "--image", tmp_path / "phone.jpg", "--strength", 0.5,
                 "--steps", 2, "--out", tmp_path / "phone-out", "--server", server.url)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "phone-out.png").size == (80, 120)
    assert Image.open(tmp_path / "phone-out.png").info.get("icc_profile") == wide, "its colours mean what they did"
    done = easel("run", "img2img", "--prompt", "x", "--image", tmp_path / "print.jpg", "--strength", 0.5,
                 "--steps", 2, "--out", tmp_path / "print-out.jpg", "--lossy", "--server", server.url)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "print-out.jpg").size == (96, 64)


def test_run_keeps_a_wide_gamut_pictures_numbers_and_its_colour_profile(server, inputs):
    # The numbers are edited as they are and the result carries the input's profile: untouched pixels stay
    # exact and look the same in a colour-managed viewer (written without it, every colour looked duller).
    image, mask, folder = inputs
    wide = krita_profile("Rec2020-elle-V4-g10.icc")
    image.save(folder / "wide.png", icc_profile=wide)
    common = ["run", "inpaint", "--prompt", "a window", "--image", folder / "wide.png", "--mask", folder / "mask.png",
              "--seed", 4, "--steps", 2, "--server", server.url]
    bmp = easel(*common, "--out", folder / "out.bmp")
    assert bmp.returncode == 2 and "keeps no colour profile" in bmp.stderr and "Rec2020-elle-V4-g10" in bmp.stderr
    assert not (folder / "out.bmp").exists()
    done = easel(*common, "--out", folder / "out.png")
    assert done.returncode == 0, done.stderr
    out = Image.open(folder / "out.png")
    assert out.info.get("icc_profile") == wide
    reach = masks.shape_mask(np.asarray(mask), 8, 16) > 0
    assert (np.asarray(out)[~reach] == np.asarray(image)[~reach]).all()


def test_run_shows_grey_and_cmyk_pictures_in_the_colours_their_profiles_give(server, tmp_path):
    # A gamma-1.8 grey scan and a profiled CMYK print file came back as their bare numbers read as sRGB
    # (darker greys; 100% cyan as 0,255,255): now converted through their profiles, and the server (which
    # decodes the PNG itself) and the composite agree, so untouched pixels are exactly those colours.
    from PIL import ImageCms

    from backend.imaging import to_array

    grey = Image.fromarray(np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1)), "L")
    grey.save(tmp_path / "scan.png", icc_profile=krita_profile("Gray-D50-elle-V4-g18.icc"))
    Image.new("CMYK", (64, 48), (255, 0, 0, 0)).save(tmp_path / "print.jpg", quality=100,
                                                      icc_profile=krita_profile("cmyk.icm"))
    rect_mask((64, 48), (24, 16, 40, 32)).save(tmp_path / "mask.png")
    for name in ("scan.png", "print.jpg"):
        done = easel("run", "inpaint", "--prompt", "x", "--image", tmp_path / name, "--mask", tmp_path / "mask.png",
                     "--grow", 0, "--feather", 0, "--steps", 2, "--out", tmp_path / f"{name}-out.png",
                     "--server", server.url)
        assert done.returncode == 0, done.stderr
        out = np.asarray(Image.open(tmp_path / f"{name}-out.png").convert("RGB"))
        shown = to_array(Image.open(tmp_path / name), "RGB")
        keep = np.asarray(Image.open(tmp_path / "mask.png")) == 0
        assert (out[keep] == shown[keep]).all(), name
        assert not (out[keep] == np.asarray(Image.open(tmp_path / name).convert("RGB"))[keep]).all(), name
    profile = ImageCms.ImageCmsProfile(io.BytesIO(krita_profile("cmyk.icm")))
    assert out[0, 0].tolist() == list(ImageCms.profileToProfile(Image.new("CMYK", (1, 1), (255, 0, 0, 0)), profile,
                                                                  ImageCms.createProfile("sRGB"),
                                                                  outputMode="RGB").getpixel((0, 0)))


def test_16_bit_tiffs_and_turned_16_bit_pngs_are_rounded_as_the_readme_says(server, capsys, tmp_path):
    # Results are 8-bit, 16-bit values rounded (v / 257): a 16-bit TIFF, and a 16-bit PNG that EXIF turns,
    # kept Pillow's high byte instead (1234 -> 4, not 5), untouched pixels one level off.
    import cv2

    wide = np.zeros((48, 64, 3), np.uint16)
    wide[..., 0], wide[..., 1], wide[..., 2] = np.linspace(0, 65535, 64).astype(np.uint16), 40000, 1234
    cv2.imwrite(str(tmp_path / "scan.tif"), wide[..., ::-1])  # OpenCV writes BGR
    rect_mask((64, 48), (24, 16, 40, 32)).save(tmp_path / "mask.png")
    status, _, err = easel_here(capsys, "run", "inpaint", "--prompt", "x", "--image", tmp_path / "scan.tif", "--mask",
                                tmp_path / "mask.png", "--grow", 0, "--feather", 0, "--steps", 2,
                                "--out", tmp_path / "out.png", "--server", server.url)
    assert status == 0, err
    keep = np.asarray(Image.open(tmp_path / "mask.png")) == 0
    rounded = np.rint(wide / 257).astype(np.uint8)
    assert (np.asarray(Image.open(tmp_path / "out.png"))[keep] == rounded[keep]).all()
    assert rounded[0, 0, 2] == 5
    png = cv2.imencode(".png", wide[::-1, ::-1, ::-1])[1].tobytes()  # stored upside down ...
    exif = Image.Exif()
    exif[0x0112] = 3  # ... and EXIF turns it the right way up
    body = exif.tobytes().removeprefix(b"Exif\0\0")
    chunk = len(body).to_bytes(4, "big") + b"eXIf" + body + zlib.crc32(b"eXIf" + body).to_bytes(4, "big")
    end = png.index(b"IDAT") - 4
    (tmp_path / "phone.png").write_bytes(png[:end] + chunk + png[end:])
    status, _, err = easel_here(capsys, "run", "inpaint", "--prompt", "x", "--image", tmp_path / "phone.png",
                                "--mask", tmp_path / "mask.png", "--grow", 0, "--feather", 0, "--steps", 2,
                                "--out", tmp_path / "phone-out.png", "--server", server.url)
    assert status == 0, err
    assert (np.asarray(Image.open(tmp_path / "phone-out.png"))[keep] == rounded[keep]).all()


def test_run_keeps_a_scans_print_resolution(server, capsys, tmp_path):
    # A 300-dpi scan came back without its resolution (72 dpi in most editors: printed four times as large).
    picture(64, 48).save(tmp_path / "scan.jpg", dpi=(300, 300), quality=95)
    for out in ("out.png", "out.tif", "out.jpg"):
        status, _, err = easel_here(capsys, "run", "img2img", "--prompt", "x", "--image", tmp_path / "scan.jpg",
                                    "--strength", 0.5, "--steps", 2, "--lossy", "--out", tmp_path / out,
                                    "--server", server.url)
        assert status == 0, err
        assert [round(v) for v in Image.open(tmp_path / out).info["dpi"]] == [300, 300], out


def test_an_upscaled_scan_keeps_its_print_size(server, capsys, tmp_path):
    # An upscale's result was written without a resolution: 72 dpi in most editors, a 300-dpi scan made twice as
    # large printed eight times as large. It has the scan's print size, so twice the pixels an inch.
    picture(64, 48).save(tmp_path / "scan.jpg", dpi=(300, 300), quality=95)
    for out in ("out.png", "out.tif", "out.jpg"):
        status, _, err = easel_here(capsys, "run", "upscale", "--image", tmp_path / "scan.jpg", "--upscaler",
                                    "lanczos", "--lossy", "--out", tmp_path / out, "--server", server.url)
        assert status == 0, err
        written = Image.open(tmp_path / out)
        assert written.size == (128, 96) and [round(v) for v in written.info["dpi"]] == [600, 600], out


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
        done = easel(*common, *extra, "--out", folder / f"out-{name}.png")
        assert done.returncode == 0, done.stderr
        outputs[name] = np.asarray(Image.open(folder / f"out-{name}.png"))
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


def test_a_misplaced_pre_or_a_misspelt_mode_is_named_not_read_as_a_file_name(tmp_path):
    # `depth:input:pre:0.5` said "cannot read input:pre: no such file", `x.png:0.5:Style` "cannot read x.png:0.5:Style"
    from backend.cli import UsageError, _control_unit, _reference

    Image.new("RGB", (32, 32), "white").save(tmp_path / "x.png")
    path = tmp_path / "x.png"
    for spec in ("depth:input:pre:0.5", f"depth:{path}:pre:0.5:0.9"):
        with pytest.raises(UsageError, match="'pre' is not a SCALE, START or END number; .* with :pre last"):
            _control_unit(spec)
    for spec in (f"{path}:0.5:Style", f"{path}:Style"):
        with pytest.raises(UsageError, match="'Style' is neither a WEIGHT nor a MODE"):
            _reference(spec)
    with pytest.raises(UsageError, match="no such file"):
        _reference(f"{tmp_path / 'missing.png'}:0.5")


def test_python_m_backend_cli_runs_the_command():
    """`python -m backend.cli` is the command (every subcommand's function is defined before it runs)."""
    root = Path(__file__).resolve().parents[1]
    for args, expected in ((["--help"], "demo-model"), (["run", "--help"], "--grow"),
                           (["preprocess", "--help"], "--resolution")):
        done = subprocess.run([sys.executable, "-m", "backend.cli", *args], capture_output=True, text=True,
                              cwd=root, timeout=120)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout and "Traceback" not in done.stderr
        if args[0] == "preprocess":  # (tile and inpaint were offered, and always refused)
            assert "segmentation" in done.stdout and "tile" not in done.stdout and "inpaint" not in done.stdout


# -- easel run as a new user meets it ----------------------------------------------------------

def easel_here(capsys, *args):
    """The command run in this process, for answers that need no job: (exit status, stdout, stderr)."""
    from backend.cli import main

    capsys.readouterr()
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def nowhere():
    return f"ws://127.0.0.1:{free_port()}/"


def test_a_generate_size_off_the_grid_is_noted(server, tmp_path, capsys):
    status, _, err = easel_here(capsys, "run", "generate", "--prompt", "x", "--steps", 1, "--width", 60, "--height", 64,
                                "--out", tmp_path / "g.png", "--server", server.url)
    assert status == 0 and "note: --width 60 is made as 64 (a generated picture's sides are multiples of 8)" in err
    assert Image.open(tmp_path / "g.png").size == (64, 64)


def test_run_says_when_a_large_picture_runs_in_tiles(server, tmp_path, capsys):
    """A large refine counted to "step 4/4" of its 4 steps with no word of its tiles (the time they take)."""
    picture(800, 600).save(tmp_path / "large.png")
    picture(400, 300).save(tmp_path / "small.png")
    for name, said in (("large", "refined in 4 tiles of 512x512 at full resolution"), ("small", None)):
        status, _, err = easel_here(capsys, "run", "img2img", "--prompt", "x", "--image", tmp_path / f"{name}.png",
                                    "--strength", 0.25, "--steps", 4, "--out", tmp_path / f"{name}-out.png",
                                    "--server", server.url)
        assert status == 0, err
        assert (said in err) if said else ("tiles" not in err), err
    status, _, err = easel_here(capsys, "run", "generate", "--prompt", "x", "--width", 800, "--height", 600,
                                "--steps", 2, "--out", tmp_path / "gen.png", "--server", server.url)
    first = near_native(800, 600, 512, 1.0).size  # (the demo model's native side)
    assert status == 0 and f"made at {first[0]}x{first[1]}, then refined in 4 tiles of 512x512" in err, err


def test_run_says_when_the_model_loads_first(demo_config, tmp_path, capsys):
    """A first job on a hub model downloads gigabytes before its first step; nothing was shown meanwhile."""
    from backend.engine.engine import Engine
    from backend.engine.models import ModelRegistry, pick_device

    with ServerThread(demo_config, Engine(ModelRegistry(demo_config, *pick_device("cpu")))) as fresh:
        for first in (True, False):
            status, _, err = easel_here(capsys, "run", "generate", "--prompt", "x", "--steps", 1, "--width", 64,
                                        "--height", 64, "--out", tmp_path / f"{first}.png", "--server", fresh.url)
            assert status == 0 and ("model 'demo' loads first" in err) == first, err


def test_a_plain_upscale_does_not_say_the_model_loads(demo_config, tmp_path, capsys):
    """An upscale without --strength runs no diffusion model: "model 'demo' loads first" was said anyway."""
    from backend.engine.engine import Engine
    from backend.engine.models import ModelRegistry, pick_device

    picture(64, 48).save(tmp_path / "in.png")
    with ServerThread(demo_config, Engine(ModelRegistry(demo_config, *pick_device("cpu")))) as fresh:
        status, _, err = easel_here(capsys, "run", "upscale", "--image", tmp_path / "in.png", "--upscaler", "lanczos",
                                    "--out", tmp_path / "big.png", "--server", fresh.url)
        assert status == 0 and "loads first" not in err, err
        with Client(fresh.url) as client:  # (and it was not loaded: the note would have been true)
            assert "demo" not in client.status().get("loaded_models", ())


def test_package_into_a_file_says_so(tmp_path, capsys):
    (tmp_path / "dist").write_text("")
    status, _, err = easel_here(capsys, "package", "krita", "--out", tmp_path / "dist")
    assert status == 1 and "cannot write into --out" in err and "it is a file, not a folder" in err, err


def test_package_from_an_installation_without_the_adapters_says_to_use_a_checkout(tmp_path, capsys, monkeypatch):
    # `pip install .` (not -e) copies only the server; the missing plugin folder was called an unwritable --out
    from backend import packaging

    monkeypatch.setitem(packaging.SOURCES, "krita", tmp_path / "site-packages" / "krita_plugin")
    status, _, err = easel_here(capsys, "package", "krita", "--out", tmp_path / "dist")
    assert status == 1 and "from a checkout" in err and "pip install -e ." in err and "--out" not in err, err
    assert not (tmp_path / "dist").exists()


def test_models_lists_the_names_run_takes(server, capsys):
    status, out, err = easel_here(capsys, "models", "--server", server.url)
    assert status == 0, err
    assert out.startswith("models (--model):\n  demo (SD 1.5, ") and "\npresets (--preset):\n  lcm (" in out, out
    assert "LoRAs (--lora):" in out and "upscalers (--upscaler):\n  lanczos" in out
    status, _, err = easel_here(capsys, "models", "--server", nowhere())
    assert status == 1 and "cannot reach the Easel server" in err


def test_run_help_gives_every_option_its_range_and_default_from_the_wire_fields(capsys):
    from backend.cli import RUN_OPTIONS, build_parser
    from shared.job import SUBMIT_FIELDS

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    helps = {action.dest: " ".join(action.help.split()) for action in run._actions}
    assert all(helps.values()), [dest for dest, text in helps.items() if not text]
    def number(value):
        return str(int(value)) if float(value).is_integer() else str(value)

    for option, field in RUN_OPTIONS.items():
        spec, text = SUBMIT_FIELDS[field], helps[option]
        for bound in (spec.minimum, spec.maximum):
            assert bound is None or number(bound) in text, (option, text)
        if isinstance(spec.default, (int, float)) or spec.default:
            assert f"default {number(spec.default) if isinstance(spec.default, (int, float)) else spec.default}" \
                in text, (option, text)
    assert "(0 to 256, default 8)" in helps["grow"] and "(0 to 256, default 16)" in helps["feather"]
    assert "SCALE: 0 to 2, default 1" in helps["control"] and "WEIGHT: 0 to 2, default 1" in helps["reference"]
    assert "default random" in helps["seed"] and "native size" in helps["width"]
    assert "default the model's: 7, instruct 7.5; flux 3.5" in helps["guidance"], "one default per family"
    # upscale's own readings of the shared options (a plain upscale does not refine at strength 1)
    assert "upscale: from --scale" in helps["width"] and "none (0) when omitted" in helps["strength"]
    assert "upscale" in helps["image"] and "expand" in helps["image"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "--feather PX inpaint: soften the grown mask's edge over this many pixels (0 to 256, default 16)" in printed


@pytest.fixture
def small(tmp_path):
    picture(64, 48).save(tmp_path / "in.png")
    rect_mask((64, 48), (10, 10, 30, 30)).save(tmp_path / "mask.png")
    return tmp_path


@pytest.mark.parametrize("args, said", [
    (["inpaint", "--mask", "{mask}", "--grow", 300], "--grow must be at most 256, got 300"),
    (["inpaint", "--mask", "{mask}", "--feather", -1], "--feather must be at least 0, got -1"),
    (["img2img", "--strength", 1.5], "--strength must be at most 1, got 1.5"),
    (["img2img", "--strength", 0.01], "--strength: strength 0.01 x 20 steps leaves no denoising step; use at least "
     "100 steps, or a higher strength"),
    (["img2img", "--steps", 0], "--steps must be at least 1, got 0"),
    (["remove", "--mask", "{mask}", "--steps", 2],  # said "strength 1 x 2 steps leaves no step", then "raise the
     # strength" when 1 is the most there is; then led by --strength, an option not typed that cannot help
     "easel: --steps: remove refines at strength x 0.4, and 1 x 0.4 x 2 steps leaves no denoising step; use at least "
     "3 steps\n"),
    # values starting with '-' were argparse's "expected one argument"; negative numbers always reached the checks
    (["expand", "--aspect", "-16:9"], "--aspect -16:9: expected W:H with two positive whole numbers, e.g. 16:9"),
    (["img2img", "--prompt", "-(red"], "--prompt: '(' at character 2 is never closed with ')'"),
    (["expand", "--left", -5], "--left must be at least 0, got -5"),
    (["img2img", "--guidance", 51], "--guidance must be at most 50"),
    (["img2img", "--width", 64], "img2img works at the picture's own size; --width is for generate"),
    (["img2img", "--mask", "{mask}"], "img2img takes no --mask"),
    (["img2img", "--scale", 2], "--scale is for upscale; img2img does not take it"),
    (["generate", "--width", 1024, "--height", 768, "--steps", 2, "--strength", 0.3],
     "--strength: refine 0.3 x 2 steps leaves no denoising step for the second stage of a large generate"),
    (["inpaint", "--mask", "{mask}", "--upscaler", "lanczos"], "--upscaler is for upscale (and a generate above"),
    (["inpaint"], "inpaint needs --mask"),
    (["img2img", "--seed", 4294967295, "--batch", 2], "--seed: seed + batch - 1 must stay within 4294967295"),
    (["img2img", "--control", "canny:{image}:3"], "--control canny:{image}:3: SCALE must be at most 2, got 3.0"),
    (["img2img", "--control", "sketch:{image}"], "--control sketch:{image}: TYPE must be one of canny,"),
    (["img2img", "--control", "canny:input", "--control", "depth:{image}:1:0.9:0.5"],
     "the 2nd --control (depth:{image}:1:0.9:0.5): START (0.9) must be before END (0.5)"),
    (["img2img", "--control", "tile:input:pre"],
     "--control tile:input:pre: the tile control type has no preprocessor: its control image is the picture "
     "itself, so leave out :pre"),
    (["img2img", "--reference", "{image}:5"], "--reference {image}:5: WEIGHT must be at most 2, got 5.0"),
    (["instruct", "--image-guidance", 30], "--image-guidance must be at most 20, got 30"),
    (["img2img", "--image-guidance", 2], "--image-guidance is for instruct; img2img does not take it"),
    (["instruct", "--strength", 0.5], "instruct takes no --strength: it runs every step"),
    (["upscale", "--scale", 2, "--strength", 0.01, "--steps", 20],
     "--strength 0.01 with 20 --steps leaves no denoising step; raise either"),
    (["img2img", "--clip-skip", 13], "--clip-skip must be at most 12, got 13"),
    (["img2img", "--prompt", "a (red door"], "--prompt: '(' at character 3 is never closed with ')'"),
    (["img2img", "--negative", "(blurry:1..5)"], "--negative: the weight '1..5' of the group at character 1"),
])
def test_run_errors_name_the_options_typed_before_connecting(capsys, small, args, said):
    names = {"image": small / "in.png", "mask": small / "mask.png"}
    args = [str(a).format(**names) for a in args]
    if args[0] != "generate":
        args[1:1] = ["--image", names["image"]]
    status, _, err = easel_here(capsys, "run", *args, "--out", small / "o.png", "--server", nowhere())
    assert status == 2 and said.format(**names) in err, err
    assert "cannot reach" not in err, "checked before connecting"
    for field in ("mask_grow", "mask_feather", "control[", "references[", "`"):
        assert field not in err
    assert not (small / "o.png").exists()


@pytest.mark.parametrize("out, fmt", [("o.bmp", "BMP"), ("o.jpg", "JPEG"), ("o.gif", "GIF")])
def test_formats_without_transparency_are_refused_where_the_result_keeps_some(capsys, small, out, fmt):
    # A transparent picture inpainted into a .bmp came back opaque, its hidden colours showing; into a .jpg or
    # .gif (with --lossy, which is about changed pixels, not lost transparency) the same, silently.
    Image.new("RGBA", (64, 48), (200, 10, 10, 0)).save(small / "clear.png")
    for mode, name, extra in (("inpaint", "clear.png", ["--mask", small / "mask.png"]),
                                 ("inpaint", "in.png", ["--mask", small / "mask.png", "--layer"])):
        status, _, err = easel_here(capsys, "run", mode, "--image", small / name, *extra, "--out", small / out,
                                    "--lossy", "--server", nowhere())
        assert status == 2 and f"{fmt} keeps no transparency" in err and ".tga" in err, err
    status, _, err = easel_here(capsys, "run", "img2img", "--image", small / "clear.png", "--out", small / out,
                                "--lossy", "--server", nowhere())
    assert "cannot reach" in err, f"an img2img result is opaque: {fmt} is fine"
    status, _, err = easel_here(capsys, "run", "inpaint", "--image", small / "clear.png", "--mask", small / "mask.png",
                                "--out", small / "o.tga", "--server", nowhere())
    assert "cannot reach" in err, "TGA keeps transparency"
    Image.new("RGBA", (64, 48), (200, 10, 10, 255)).save(small / "opaque.png")  # an alpha channel, all opaque
    status, _, err = easel_here(capsys, "run", "inpaint", "--image", small / "opaque.png", "--mask",
                                small / "mask.png", "--lossy", "--out", small / out, "--server", nowhere())
    assert "cannot reach" in err, f"nothing transparent to lose: {fmt} is fine"


def test_lossy_formats_need_lossy_only_where_the_edit_keeps_pixels_untouched(server, capsys, small):
    # `easel run generate --out result.jpg` was refused: "it would change the pixels the edit left untouched",
    # of a picture made whole; true only of the modes that keep some of the picture's pixels exactly.
    mask = ["--mask", small / "mask.png"]
    for mode, extra in (("inpaint", mask), ("remove", mask), ("expand", ["--right", 16]), ("instruct", mask)):
        status, _, err = easel_here(capsys, "run", mode, "--prompt", "x", "--image", small / "in.png", *extra,
                                    "--out", small / f"{mode}.jpg", "--server", nowhere())
        assert status == 2 and "it would change the pixels the edit left untouched" in err, (mode, err)
    for mode, extra in (("img2img", []), ("instruct", []), ("upscale", [])):
        status, _, err = easel_here(capsys, "run", mode, "--prompt", "x", "--image", small / "in.png", *extra,
                                    "--out", small / f"{mode}.jpg", "--server", nowhere())
        assert "cannot reach" in err and "--lossy" not in err, (mode, err)
    for name in ("g.jpg", "g.png"):
        status, out, err = easel_here(capsys, "run", "generate", "--prompt", "x", "--steps", 1, "--width", 64,
                                      "--height", 64, "--seed", 5, "--out", small / name, "--server", server.url)
        assert status == 0 and name in out, err
    assert Image.open(small / "g.jpg").format == "JPEG"
    # written as a painter saves a result (Pillow's default quality 75 at half-resolution colour: ~7x the error)
    jpeg, png = (np.asarray(Image.open(small / name).convert("RGB"), float) for name in ("g.jpg", "g.png"))
    assert np.abs(jpeg - png).mean() < 2, np.abs(jpeg - png).mean()  # (0.23 at 95 and 4:4:4; 6.6 at the default)


def test_the_formats_called_lossless_are_those_pillow_writes_without_loss(tmp_path):
    # PPM, QOI and SGI (lossless) were refused as lossy for an inpaint, and QOI's and SGI's transparency as lost
    from backend.run_files import ALPHA_FORMATS, LOSSLESS_FORMATS, _writable, write_picture

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (32, 48, 4), np.uint8)
    extensions = {fmt: ext for ext, fmt in reversed(Image.registered_extensions().items())}
    checked = set()
    for fmt, ext in sorted(extensions.items()):
        if not _writable(fmt):
            continue
        kept = {}
        for mode, pixels in (("RGB", rgba[..., :3]), ("RGBA", rgba)):
            path = tmp_path / f"{fmt}-{mode}{ext}"
            try:
                write_picture(Image.fromarray(pixels, mode), path, None)
                with Image.open(path) as back:
                    kept[mode] = np.array_equal(np.asarray(back.convert(mode)), pixels)
            except (OSError, ValueError):  # (Pillow writes no RGB or RGBA in it, or cannot read it back)
                kept[mode] = None
        if kept["RGB"] is not None:
            checked.add(fmt)
            assert kept["RGB"] == (fmt in LOSSLESS_FORMATS), fmt
        if kept["RGB"] and kept["RGBA"] is not None:
            assert kept["RGBA"] == (fmt in ALPHA_FORMATS), fmt
    assert {"PNG", "PPM", "QOI", "SGI", "JPEG", "GIF"} <= checked


def test_a_gif_needs_lossy_in_every_mode_and_lossless_formats_need_it_in_none(server, capsys, small):
    # `easel run generate --out x.gif` wrote the picture in 256 colours without a word
    for mode, extra in (("generate", []), ("img2img", ["--image", small / "in.png"]),
                        ("inpaint", ["--image", small / "in.png", "--mask", small / "mask.png"])):
        status, _, err = easel_here(capsys, "run", mode, *extra, "--out", small / f"{mode}.gif", "--server", nowhere())
        assert status == 2 and "GIF keeps 256 colours at most: " in err and "--lossy" in err, (mode, err)
        assert ("reduced to a palette of 256 colours" in err) == (mode != "inpaint"), err
    for name in ("o.ppm", "o.qoi", "o.sgi"):  # (they were "lossy": the inpaint was refused)
        status, _, err = easel_here(capsys, "run", "inpaint", "--image", small / "in.png", "--mask", small / "mask.png",
                                    "--out", small / name, "--server", nowhere())
        assert "cannot reach" in err and "lossy" not in err, (name, err)
    status, out, err = easel_here(capsys, "run", "generate", "--steps", 1, "--width", 64, "--height", 64, "--lossy",
                                  "--out", small / "g.gif", "--server", server.url)
    assert status == 0 and Image.open(small / "g.gif").format == "GIF", err


@pytest.mark.parametrize("mode, extra", [("expand", ["--right", 16]), ("upscale", [])])
def test_layer_is_refused_where_the_result_is_the_whole_picture(capsys, small, mode, extra):
    # expand --layer and upscale --layer wrote the opaque whole picture, the --layer ignored without a word.
    status, _, err = easel_here(capsys, "run", mode, "--image", small / "in.png", *extra, "--layer",
                                "--out", small / "o.png", "--server", nowhere())
    assert status == 2 and f"--layer is for inpaint, remove, instruct, img2img and generate: {mode} writes" in err
    assert not (small / "o.png").exists()


@pytest.mark.parametrize("name", ["o.psd", "o.grib", "o.xpm"])
def test_formats_pillow_cannot_write_are_refused_before_the_job(capsys, small, name):
    # --out o.psd --lossy ran the job, then ended in a traceback (KeyError: 'PSD'); .grib in "save handler
    # not installed" after the job.
    status, _, err = easel_here(capsys, "run", "img2img", "--image", small / "in.png", "--lossy", "--out",
                                small / name, "--server", nowhere())
    assert status == 2 and "cannot write them; use .png" in err and "cannot reach" not in err, err
    assert not (small / name).exists()


def _mask_files(folder, mask):
    """The one mask as painters' tools save it: 1-bit, 16-bit grey, white or black strokes on a transparent
    layer, a JPEG, an RGB PNG."""
    values = np.asarray(mask)
    Image.fromarray(values).convert("1").save(folder / "one-bit.png")
    Image.fromarray(values.astype(np.uint16) * 257).save(folder / "sixteen.png")
    for name, colour in (("white-on-clear.png", 255), ("black-on-clear.png", 0)):
        layer = np.zeros(values.shape + (4,), np.uint8)
        layer[..., :3], layer[..., 3] = colour, values
        Image.fromarray(layer, "RGBA").save(folder / name)
    Image.fromarray(values).save(folder / "grey.jpg", quality=90)
    Image.fromarray(values).convert("RGB").save(folder / "rgb.png")
    return ["one-bit.png", "sixteen.png", "white-on-clear.png", "black-on-clear.png", "grey.jpg", "rgb.png"]


def test_masks_as_painters_save_them_change_only_their_area(server, capsys, small):
    source = np.asarray(Image.open(small / "in.png"))
    mask = Image.open(small / "mask.png")
    reach = masks.shape_mask(np.asarray(mask), 8, 16) > 0
    outs = {}
    for name in _mask_files(small, mask):
        status, out, err = easel_here(capsys, "run", "inpaint", "--image", small / "in.png", "--mask", small / name,
                                      "--steps", 1, "--seed", 2, "--out", small / f"out-{name}.png",
                                      "--server", server.url)
        assert status == 0, (name, err)
        outs[name] = np.asarray(Image.open(small / f"out-{name}.png"))
        assert (outs[name][~reach] == source[~reach]).all(), name
    exact = [name for name in outs if name != "grey.jpg"]
    assert all((outs[name] == outs[exact[0]]).all() for name in exact), "each reads as the same mask"


def test_a_mask_in_colour_is_refused_with_how_to_save_one(capsys, small):
    """Red strokes on black were a 30% edit, and strokes over a copy of the picture made all of it the mask."""
    strokes = np.zeros((48, 64, 3), np.uint8)
    strokes[10:30, 10:30] = (255, 0, 0)
    painted_over = np.asarray(picture(64, 48)).copy()
    painted_over[10:30, 10:30] = (255, 0, 0)
    for name, pixels in (("red.png", strokes), ("over.png", painted_over)):
        Image.fromarray(pixels).save(small / name)
        status, _, err = easel_here(capsys, "run", "inpaint", "--image", small / "in.png", "--mask", small / name,
                                    "--out", small / "o.png", "--server", nowhere())
        assert status == 2 and "is in colour (its pixel at " in err, err
        assert "Save the mask as white strokes on black" in err
    assert "(its pixel at 10,10 is 255,0,0)" in easel_here(capsys, "run", "inpaint", "--image", small / "in.png",
                                                            "--mask", small / "red.png", "--out", small / "o.png",
                                                            "--server", nowhere())[2]
    grey = np.zeros((48, 64, 3), np.uint8)
    grey[10:30, 10:30] = (250, 255, 247)  # a grey mask saved in colour, a few levels apart
    Image.fromarray(grey).save(small / "grey.png")
    on_layer = np.zeros((48, 64, 4), np.uint8)
    on_layer[10:30, 10:30] = (255, 0, 0, 255)  # red strokes on a transparent layer: read by their alpha
    Image.fromarray(on_layer).save(small / "layer.png")
    for name in ("grey.png", "layer.png"):
        status, _, err = easel_here(capsys, "run", "inpaint", "--image", small / "in.png", "--mask", small / name,
                                    "--out", small / "o.png", "--server", nowhere())
        assert status == 1 and "in colour" not in err and "unreachable" in err, err


def test_invert_mask_reads_a_mask_drawn_white_for_keep_and_a_mask_of_most_of_the_picture_is_noted(
        server, capsys, small):
    """A mask drawn the other way round (white = keep) repainted nearly the whole picture without a word."""
    keep = Image.fromarray(255 - np.asarray(Image.open(small / "mask.png")))
    keep.save(small / "keep.png")
    common = ["run", "inpaint", "--image", small / "in.png", "--steps", 1, "--seed", 5, "--server", server.url]
    status, _, err = easel_here(capsys, *common, "--mask", small / "mask.png", "--out", small / "a.png")
    assert status == 0 and "note" not in err, err
    status, _, err = easel_here(capsys, *common, "--mask", small / "keep.png", "--invert-mask",
                                "--out", small / "b.png")
    assert status == 0 and "note" not in err, err
    assert (small / "a.png").read_bytes() == (small / "b.png").read_bytes()
    status, _, err = easel_here(capsys, *common, "--mask", small / "keep.png", "--out", small / "c.png")
    assert status == 0 and "--mask " + str(small / "keep.png") + " selects 87% of the picture" in err, err
    assert "if it is white where the picture should stay, pass --invert-mask" in err
    Image.new("L", (64, 48), 255).save(small / "white.png")
    status, _, err = easel_here(capsys, *common, "--mask", small / "white.png", "--invert-mask",
                                "--out", small / "d.png")
    assert status == 2 and "is white everywhere: inverted (--invert-mask), it leaves nothing to change" in err, err
    status, _, err = easel_here(capsys, "run", "instruct", "--prompt", "x", "--image", small / "in.png",
                                "--invert-mask", "--out", small / "e.png", "--server", server.url)
    assert status == 2 and "--invert-mask needs --mask" in err, err


def test_a_control_map_of_another_shape_is_said_to_be_stretched(capsys, small):
    # A 600x20 map given for a 64x48 picture was stretched to it without a word.
    picture(600, 48).resize((600, 20)).save(small / "strip.png")
    picture(128, 96).save(small / "double.png")  # the picture's shape at twice its size: nothing to say
    status, _, err = easel_here(capsys, "run", "img2img", "--image", small / "in.png", "--control",
                                f"canny:{small / 'strip.png'}", "--control", f"depth:{small / 'double.png'}",
                                "--out", small / "o.png", "--server", nowhere())
    assert f"--control canny:{small / 'strip.png'} is 600x20 and --image {small / 'in.png'} 64x48: the map is " \
           "stretched" in err, err
    assert "double.png is" not in err and "cannot reach" in err
    # an expand stretches its maps to the new canvas: a map of the picture alone went over the band unsaid
    status, _, err = easel_here(capsys, "run", "expand", "--image", small / "in.png", "--right", 64, "--control",
                                f"canny:{small / 'double.png'}", "--control", f"depth:{small / 'strip.png'}",
                                "--out", small / "o.png", "--server", nowhere())
    assert f"--control canny:{small / 'double.png'} is 128x96 and the expanded canvas 128x48: the map is " \
           "stretched" in err, err
    picture(256, 96).save(small / "canvas.png")
    status, _, err = easel_here(capsys, "run", "generate", "--width", 256, "--height", 96, "--control",
                                f"canny:{small / 'canvas.png'}", "--control", f"depth:{small / 'double.png'}",
                                "--out", small / "o.png", "--server", nowhere())
    assert "canvas.png is" not in err and f"depth:{small / 'double.png'} is 128x96 and --width/--height 256x96" \
        in err, err


def test_avif_keeps_a_profile_and_transparency(capsys, small):
    # An Adobe RGB photo with --out x.avif --lossy was refused: "AVIF keeps no colour profile" (it keeps both).
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow writes no AVIF")
    Image.new("RGBA", (64, 48), (200, 10, 10, 0)).save(small / "wide.png", icc_profile=krita_profile(
        "ClayRGB-elle-V2-g22.icc"))
    status, _, err = easel_here(capsys, "run", "inpaint", "--image", small / "wide.png", "--mask", small / "mask.png",
                                "--lossy", "--out", small / "o.avif", "--server", nowhere())
    assert "cannot reach" in err, err


def test_the_profile_refusal_asks_for_lossy_only_where_it_is_needed(capsys, small):
    # An img2img of an Adobe RGB photo into a .bmp was told to use ".jpg (with --lossy)": a whole new picture
    # needs no --lossy.
    Image.new("RGB", (64, 48), "teal").save(small / "wide.png", icc_profile=krita_profile("ClayRGB-elle-V2-g22.icc"))
    for mode, extra, lossy in (("img2img", [], False), ("inpaint", ["--mask", small / "mask.png"], True)):
        status, _, err = easel_here(capsys, "run", mode, "--image", small / "wide.png", *extra, "--out",
                                    small / "o.bmp", "--server", nowhere())
        assert status == 2 and "keeps no colour profile" in err and ".jpg" in err, err
        assert ("(with --lossy)" in err) == lossy, (mode, err)


def test_an_aspect_too_far_from_the_pictures_is_said_in_its_terms(capsys, small):
    # A 64x8000 strip with --aspect 16:9 was told "--left must be at most 4096, got 7079": not an option typed.
    Image.new("RGB", (64, 8000)).save(small / "strip.png")
    status, _, err = easel_here(capsys, "run", "expand", "--image", small / "strip.png", "--aspect", "16:9",
                                "--out", small / "o.png", "--server", nowhere())
    assert status == 2 and "--aspect 16:9: the 64x8000 picture would grow by 7080 pixels on the left and right, and " \
                           "an expand adds at most 4096 a side" in err and "--left" not in err, err



def test_an_aspect_over_the_servers_canvas_limit_names_the_aspect(server, capsys, small):
    Image.new("RGB", (1000, 1000)).save(small / "square.png")  # 9:1 makes it 9000 wide: over 8192
    status, _, err = easel_here(capsys, "run", "expand", "--image", small / "square.png", "--aspect", "9:1",
                                "--out", small / "o.png", "--server", server.url)
    assert status == 1 and err.startswith("easel: --aspect 9:1: the expanded canvas would be 9000x1000"), err
    assert "--left" not in err


def test_a_picture_with_several_frames_says_which_is_used(capsys, small):
    # An animated GIF or a multi-page TIFF was edited on its first frame without a word.
    frames = [Image.new("RGB", (64, 48), colour) for colour in ("red", "green", "blue")]
    frames[0].save(small / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    status, _, err = easel_here(capsys, "run", "img2img", "--image", small / "anim.gif", "--out", small / "o.png",
                                "--server", nowhere())
    assert f"--image {small / 'anim.gif'} has 3 frames (pages); the first is used" in err, err
    frames[0].save(small / "camera.jpg", format="MPO", save_all=True, append_images=frames[1:])  # photo + previews
    for name in ("in.png", "camera.jpg"):
        status, _, err = easel_here(capsys, "run", "img2img", "--image", small / name, "--out", small / "o.png",
                                    "--server", nowhere())
        assert "frames" not in err and "cannot reach" in err, err


def test_a_picture_too_large_to_decode_says_its_size(capsys, small, monkeypatch):
    # A 16000x12000 photo got "too many pixels to decode safely", naming neither its size nor a way out.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # in.png (64x48) is then over twice the limit
    status, _, err = easel_here(capsys, "run", "img2img", "--image", small / "in.png", "--out", small / "o.png",
                                "--server", nowhere())
    assert status == 2 and "64x48 is too many pixels" in err and "scale the picture down" in err, err
    assert Image.MAX_IMAGE_PIXELS == 1000, "the limit is put back"


def test_a_large_or_cut_off_png_is_said_plainly(capsys, small, monkeypatch):
    # A 12000x9000 PNG printed Pillow's DecompressionBombWarning (and was decoded, 475 MB, only to be sent as
    # it was and refused by the server); a cut-off RGBA PNG ended in a traceback once only its alpha was read.
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # in.png (64x48) is then over it, not over twice it
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        status, _, err = easel_here(capsys, "run", "img2img", "--image", small / "in.png", "--out", small / "o.png",
                                    "--server", nowhere())
    assert "cannot reach" in err and not [w for w in seen if w.category is Image.DecompressionBombWarning]
    monkeypatch.undo()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 4), np.uint8)).save(small / "clear.png")
    whole = (small / "clear.png").read_bytes()
    (small / "cut.png").write_bytes(whole[:len(whole) // 2])
    status, _, err = easel_here(capsys, "run", "inpaint", "--image", small / "cut.png", "--mask", small / "mask.png",
                                "--out", small / "o.png", "--server", nowhere())
    assert status == 2 and f"--image: cannot read {small / 'cut.png'}: image file is truncated" in err, err


def test_generate_with_the_picture_as_control_names_the_control(capsys, small):
    status, _, err = easel_here(capsys, "run", "generate", "--control", "canny:input", "--out", small / "o.png",
                                "--server", nowhere())
    assert status == 2 and "--control canny:input: IMAGE is required when generating" in err


def test_a_certificate_for_a_ws_address_is_refused(capsys, small):
    status, _, err = easel_here(capsys, "run", "generate", "--cert", small / "in.png", "--out", small / "o.png",
                                "--server", nowhere())
    assert status == 2 and "--cert is for a wss:// server" in err, err


def test_seed_minus_one_is_random_as_in_a1111(server, capsys, small):
    # WebUI users type -1 for a random seed; it was refused ("--seed must be at least 0").
    status, out, err = easel_here(capsys, "run", "generate", "--seed", -1, "--steps", 1, "--width", 64, "--height", 64,
                                  "--out", small / "r.png", "--server", server.url)
    assert status == 0 and "(seed " in out and "(seed -1)" not in out, err
    status, _, err = easel_here(capsys, "run", "generate", "--seed", -2, "--out", small / "q.png",
                                "--server", nowhere())
    assert status == 2 and "--seed must be at least 0, got -2 (-1: a random seed)" in err


def test_server_errors_name_the_options_typed(server, capsys, small):
    common = ["run", "img2img", "--image", small / "in.png", "--strength", 0.5, "--steps", 2,
              "--out", small / "o.png", "--server", server.url]
    status, _, err = easel_here(capsys, *common, "--steps", 500)
    assert status == 1 and "--steps: steps 500 is over this server's limit of 150 [limit_exceeded]" in err, err
    Image.new("RGB", (8200, 1)).save(small / "wide.png")  # over the server's 8192 pixels a side
    status, _, err = easel_here(capsys, *common, "--control", "canny:input",
                                "--control", f"depth:{small / 'wide.png'}")
    assert status == 1, err
    assert f"the 2nd --control (depth:{small / 'wide.png'}): IMAGE is 8200x1; this server accepts at most" in err
    assert "[limit_exceeded]" in err and "control[1]" not in err and not (small / "o.png").exists()
    assert "scale it down (to 8192x1 at most, keeping its shape) or crop it first" in err, "and what to do"


def test_a_generate_over_the_size_limit_is_refused_before_its_control_map_is_uploaded(server, capsys, small,
                                                                                       monkeypatch):
    frames = []  # the binary ones: uploads
    send_frame = Client._send_frame
    monkeypatch.setattr(Client, "_send_frame", lambda self, frame: (isinstance(frame, bytes) and frames.append(frame))
                        or send_frame(self, frame))
    status, _, err = easel_here(capsys, "run", "generate", "--width", 9000, "--control", f"canny:{small / 'in.png'}",
                                "--out", small / "g.png", "--server", server.url)
    assert status == 1 and "--width: width 9000 is over this server's limit of 8192 [limit_exceeded]" in err, err
    assert frames == [] and not (small / "g.png").exists()


@pytest.mark.parametrize("option, value, path", [
    ("--image", "{missing}", "{missing}"), ("--mask", "{missing}", "{missing}"),
    ("--control", "canny:{missing}:0.5", "{missing}"), ("--reference", "{missing}:0.5:style", "{missing}"),
    ("--image", "{folder}", "{folder}"), ("--image", "{text}", "{text}"),
])
def test_an_unreadable_input_names_the_option_and_the_path(capsys, small, option, value, path):
    (small / "notes.png").write_text("not a picture")
    names = {"missing": small / "nothere.png", "folder": small, "text": small / "notes.png"}
    value, path = value.format(**names), path.format(**names)
    options = {"--image": small / "in.png", "--mask": small / "mask.png", option: value}
    args = ["inpaint", *(item for pair in options.items() for item in pair)]
    status, _, err = easel_here(capsys, "run", *args, "--out", small / "o.png", "--server", nowhere())
    assert status == 2 and f"easel: {option}" in err and f"cannot read {path}: " in err, err
    assert "Errno" not in err and "Traceback" not in err
    assert any(why in err for why in ("no such file", "it is a folder", "not a picture")), err


def test_a_folder_given_as_the_result_asks_for_a_file_in_it(capsys, small):
    # `--out results/` wrote results.png beside the folder
    (small / "results").mkdir()
    for out in (f"{small / 'results'}/", small / "results"):
        status, _, err = easel_here(capsys, "run", "img2img", "--image", small / "in.png", "--out", out,
                                    "--server", nowhere())
        assert status == 2 and f"is a folder: give a file in it, e.g. {small / 'results' / 'result.png'}" in err, err
    status, _, err = easel_here(capsys, "preprocess", "canny", small / "in.png", small / "results", "--server",
                                nowhere())
    assert status == 2 and "OUTPUT" in err and "is a folder" in err, err
    assert not (small / "results.png").exists()


def test_pictures_easel_cannot_read_are_named_with_a_way_out(capsys, small):
    # An iPhone's HEIC photo was "not a picture (Pillow does not know its format)"; a camera's DNG (a TIFF
    # inside) was read as its first image, a small preview, and edited without a word.
    (small / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64))
    (small / "logo.svg").write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>')
    picture(64, 48).save(small / "DSC_0001.dng", "TIFF")  # the preview a DNG's first image would be
    picture(64, 48).save(small / "renamed.dng", "PNG")  # not a raw file, whatever its name
    (small / "cut-short.png").write_bytes(b"")  # a download that never finished
    for name, said in (("IMG_0001.HEIC", "it is a HEIC/HEIF picture (as iPhones save photos), which Easel cannot "
                                         "read; export it as PNG, TIFF or JPEG first"),
                       ("logo.svg", "it is an SVG drawing (vector, not pixels)"),
                       ("DSC_0001.dng", "it is a camera raw file, which Easel does not develop"),
                       ("cut-short.png", "the file is empty (0 bytes)")):
        status, _, err = easel_here(capsys, "run", "img2img", "--image", small / name, "--out", small / "o.png",
                                    "--server", nowhere())
        assert status == 2 and f"--image: cannot read {small / name}: {said}" in err, err
    status, _, err = easel_here(capsys, "run", "img2img", "--image", small / "renamed.dng", "--out", small / "o.png",
                                "--server", nowhere())
    assert "cannot reach" in err, err


def test_a_mask_drawn_on_a_sideways_stored_photo_is_refused_with_a_hint(server, tmp_path):
    """A phone photo stored 120x80 with EXIF orientation 6 shows (and is edited) upright at 80x120; a mask
    drawn on the stored pixels is 120x80. The command says so, and the fix it names works."""
    stored = np.zeros((80, 120, 3), np.uint8)
    stored[:, :60] = (200, 40, 40)   # the left half, which shows as the top half once upright
    stored[:, 60:] = (40, 40, 200)
    photo = Image.fromarray(stored)
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    mask = rect_mask((120, 80), (0, 0, 40, 80))  # over the red half, as stored
    mask.save(tmp_path / "mask.png")
    common = ["run", "inpaint", "--image", tmp_path / "phone.jpg", "--steps", 2, "--seed", 3, "--server", server.url]
    done = easel(*common, "--mask", tmp_path / "mask.png", "--out", tmp_path / "o.png")
    assert done.returncode == 2 and not (tmp_path / "o.png").exists()
    assert "120x80" in done.stderr and "EXIF orientation turns it upright to 80x120" in done.stderr
    assert "rotate the mask 90° clockwise" in done.stderr, done.stderr
    mask.rotate(-90, expand=True).save(tmp_path / "turned.png")  # what the hint says: 90 degrees clockwise
    done = easel(*common, "--mask", tmp_path / "turned.png", "--out", tmp_path / "o.png")
    assert done.returncode == 0, done.stderr
    upright = np.asarray(Image.open(tmp_path / "phone.jpg").transpose(Image.Transpose.ROTATE_270))
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == upright.shape == (120, 80, 3)
    assert (out[90:] == upright[90:]).all(), "the bottom (blue) part is beyond the mask's reach"
    assert not (out[:40] == upright[:40]).all(), "the masked top (red) part was repainted"


def test_ctrl_c_cancels_the_job_and_ends_cleanly(server, tmp_path):
    """Ctrl-C during a tiled job printed a traceback from inside the websocket library."""
    import signal

    picture(800, 600).save(tmp_path / "big.png")  # img2img in 2 x 2 tiles: many steps to stop in
    # (this checkout's command, whichever checkout the `easel` script was installed from)
    command = [sys.executable, "-m", "backend.cli", "run", "img2img", "--image", tmp_path / "big.png", "--strength",
               0.5, "--steps", 40, "--out", tmp_path / "o.png", "--server", server.url]
    process = subprocess.Popen([str(part) for part in command], cwd=Path(__file__).parents[1], stderr=subprocess.PIPE,
                               stdout=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    said = b""
    while b"step 1/" not in said:
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk, said
        said += chunk
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    err = (said + err).decode()
    assert process.returncode == 130, err
    assert "easel: interrupted: the job was cancelled on the server" in err and "Traceback" not in err, err
    assert not (tmp_path / "o.png").exists()
    with Client(server.url) as client:  # the server goes on with the next job
        assert client.run("generate", prompt="x", width=64, height=64, steps=1).images


@pytest.mark.parametrize("command", ["run", "preprocess"])
def test_ctrl_c_while_a_server_does_not_answer_ends_cleanly(small, command):
    import signal

    with socket.socket() as silent:  # takes the connection, never answers the handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}/"
        args = (["run", "img2img", "--image", small / "in.png", "--strength", 0.5, "--out", small / "o.png"]
                if command == "run" else ["preprocess", "canny", small / "in.png", small / "o.png"])
        process = subprocess.Popen([sys.executable, "-m", "backend.cli", *map(str, args), "--server", url],
                                   cwd=Path(__file__).parents[1], stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
        connection, _ = silent.accept()
        with connection:
            time.sleep(0.5)
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and err.strip() == "easel: interrupted", err


def test_run_does_not_overwrite_unless_forced(server, small):
    (small / "v-2.png").write_bytes(b"keep me")
    common = ["run", "img2img", "--image", small / "in.png", "--strength", 0.5, "--steps", 2, "--batch", 2,
              "--out", small / "v.png", "--server", server.url]  # no --prompt: an empty one is fine
    done = easel(*common)
    assert done.returncode == 2 and f"{small / 'v-2.png'} already exists" in done.stderr
    assert "--force" in done.stderr and "Traceback" not in done.stderr
    assert not (small / "v-1.png").exists() and (small / "v-2.png").read_bytes() == b"keep me"
    done = easel(*common, "--force")
    assert done.returncode == 0, done.stderr
    assert Image.open(small / "v-1.png").size == Image.open(small / "v-2.png").size == (64, 48)


def test_preprocess_checks_before_connecting(capsys, small):
    status, _, err = easel_here(capsys, "preprocess", "tile", small / "in.png", small / "map.png",
                                "--server", nowhere())
    assert status == 2 and "PREPROCESSOR: the tile control type has no preprocessor" in err
    status, _, err = easel_here(capsys, "preprocess", "canny", small / "in.png", small / "mask.png",
                                "--resolution", 8, "--server", nowhere())
    assert status == 2 and "already exists" in err
    status, _, err = easel_here(capsys, "preprocess", "canny", small / "in.png", small / "map.png",
                                "--resolution", 8, "--server", nowhere())
    assert status == 2 and "--resolution must be at least 64, got 8" in err


def test_run_out_is_the_shared_composite_of_the_layer(server, tmp_path):
    """`--out` is `shared.compose.composite` of the `--layer` over the input, byte for byte, and an RGBA
    input keeps its transparency where nothing was painted."""
    from shared.compose import composite

    rgba = np.dstack([np.asarray(picture(128, 64)), np.full((64, 128), 255, np.uint8)])
    rgba[:, :20, 3] = 0          # a transparent strip, beyond the mask's reach
    rgba[40:, 60:90, 3] = 128    # a half-transparent patch under the mask
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    rect_mask((128, 64), (60, 20, 90, 50)).save(tmp_path / "mask.png")
    common = ["run", "inpaint", "--image", tmp_path / "in.png", "--mask", tmp_path / "mask.png", "--steps", 2,
              "--seed", 5, "--server", server.url]
    for name, extra in (("layer", ["--layer"]), ("out", [])):
        done = easel(*common, *extra, "--out", tmp_path / f"{name}.png")
        assert done.returncode == 0, done.stderr
    layer, out = (np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("layer", "out"))
    assert out.shape == rgba.shape and layer.shape == rgba.shape
    np.testing.assert_array_equal(out, composite(rgba, layer, (0, 0)))
    assert (out[:, :20] == rgba[:, :20]).all() and (layer[:, :20, 3] == 0).all()


def test_run_expand_writes_the_grown_canvas_with_the_picture_untouched(server, tmp_path):
    image = picture(120, 90)
    image.save(tmp_path / "in.png")
    done = easel("run", "expand", "--image", tmp_path / "in.png", "--left", 16, "--bottom", 40, "--prompt", "sky",
                 "--steps", 2, "--seed", 1, "--out", tmp_path / "wide.png", "--server", server.url)
    assert done.returncode == 0, done.stderr
    out = np.asarray(Image.open(tmp_path / "wide.png"))
    assert out.shape == (130, 136, 3), "opaque: the band is painted"
    np.testing.assert_array_equal(out[:90, 16:], np.asarray(image))


def test_run_remove_needs_no_prompt_and_keeps_the_rest(server, inputs):
    image, mask, folder = inputs
    done = easel("run", "remove", "--image", folder / "in.png", "--mask", folder / "mask.png", "--steps", 10,
                 "--out", folder / "clean.png", "--server", server.url)
    assert done.returncode == 0, done.stderr
    assert "step 4/4" in done.stderr, "10 steps x 0.4: a short refining pass"
    out = np.asarray(Image.open(folder / "clean.png"))
    reach = masks.shape_mask(np.asarray(mask), 8, 16) > 0
    assert (out[~reach] == np.asarray(image)[~reach]).all()


@pytest.mark.parametrize("name", ["o.jpg", "o.gif"])
def test_run_refuses_a_lossy_out_unless_told(capsys, small, name):
    # (an edit that keeps pixels untouched; a whole new picture is written in any format)
    status, _, err = easel_here(capsys, "run", "inpaint", "--image", small / "in.png", "--mask", small / "mask.png",
                                "--out", small / name, "--server", nowhere())
    assert status == 2 and "lossy" in err and "--lossy" in err and "cannot reach" not in err


def test_run_writes_webp_lossless(server, small):
    done = easel("run", "inpaint", "--image", small / "in.png", "--mask", small / "mask.png", "--steps", 2,
                 "--out", small / "o.webp", "--server", server.url)
    assert done.returncode == 0, done.stderr
    out = np.asarray(Image.open(small / "o.webp").convert("RGB"))
    far = masks.shape_mask(np.asarray(Image.open(small / "mask.png")), 8, 16) == 0
    assert (out[far] == np.asarray(Image.open(small / "in.png"))[far]).all()


@pytest.mark.parametrize("args, said", [
    (["expand"], "expand needs at least one of --left, --top, --right, --bottom above 0"),
    (["expand", "--right", 5000], "--right must be at most 4096, got 5000"),
    (["inpaint", "--mask", "{mask}", "--left", 8], "--left is for expand"),
    (["img2img", "--fill", "blur"], "img2img has no masked area to fill; --fill is for"),
    # (it said instruct "has no masked area to fill" with the --mask right there)
    (["instruct", "--mask", "{mask}", "--fill", "blur"], "instruct pre-fills nothing (the picture itself guides "
     "the edit); --fill is for inpaint"),
])
def test_toolbox_errors_name_the_options_typed(capsys, small, args, said):
    names = {"image": small / "in.png", "mask": small / "mask.png"}
    args = [str(a).format(**names) for a in args]
    status, _, err = easel_here(capsys, "run", args[0], "--image", names["image"], *args[1:], "--out",
                                small / "o.png", "--server", nowhere())
    assert status == 2 and said in err, err


def test_run_results_carry_their_parameters_as_the_webui_saves_them(server, capsys, small):
    # A result kept no record of how it was made beyond the seed printed once: the WebUI's PNG Info, image
    # browsers and a later `easel run` could not tell its prompt, LoRAs or settings.
    status, out, err = easel_here(capsys, "run", "inpaint", "--image", small / "in.png", "--mask", small / "mask.png",
                                  "--prompt", "a red door", "--negative", "blurry", "--lora", "demo-lora:0.5",
                                  "--steps", 2, "--out", small / "o.png", "--server", server.url)
    assert status == 0, err
    seed = int(out.split("(seed ")[1].rstrip(")\n"))
    prompt, negative, items = Image.open(small / "o.png").info["parameters"].split("\n")
    assert prompt == "a red door <lora:demo-lora:0.5>" and negative == "Negative prompt: blurry"
    assert items.startswith(f"Steps: 2, Sampler: DPM++ 2M Karras, CFG scale: 7.0, Seed: {seed}, Size: 64x48, "
                            "Model: demo, Denoising strength: 1.0, Mask blur: 16"), items
    assert "Easel mode: inpaint" in items

    status, _, err = easel_here(capsys, "run", "img2img", "--image", small / "in.png", "--prompt", "café au lait",
                                "--strength", 0.5, "--steps", 2, "--lossy", "--out", small / "o.jpg",
                                "--server", server.url)
    assert status == 0, err
    comment = Image.open(small / "o.jpg").getexif().get_ifd(0x8769)[0x9286]
    assert comment.startswith(b"UNICODE\0") and comment[8:].decode("utf-16-be").startswith("café au lait\nSteps: 2")
    webui_python = Path(__file__).resolve().parents[1] / ".venv-webui" / "bin" / "python"
    if webui_python.exists():  # read back as the WebUI reads it (modules/images.py: piexif)
        read = subprocess.run([webui_python, "-c", "import sys, piexif, piexif.helper; print(piexif.helper."
                               "UserComment.load(piexif.load(sys.argv[1])['Exif'][piexif.ExifIFD.UserComment]))",
                               small / "o.jpg"], capture_output=True, text=True, encoding="utf-8")
        assert read.stdout.startswith("café au lait\nSteps: 2"), read.stderr


def test_the_token_can_come_from_easel_token_so_it_is_not_in_the_process_list(
        demo_config, engine, inputs, capsys, monkeypatch):
    from backend.cli import build_parser

    _, _, folder = inputs
    with ServerThread(dataclasses.replace(demo_config, token="s3cret"), engine) as guarded:
        command = ["preprocess", "canny", folder / "in.png", folder / "edges.png", "--server", guarded.url]
        monkeypatch.delenv("EASEL_TOKEN", raising=False)
        status, _, err = easel_here(capsys, *command)
        assert status == 1 and "give it with --token, or in $EASEL_TOKEN" in err, err
        monkeypatch.setenv("EASEL_TOKEN", "s3cret")
        status, _, err = easel_here(capsys, *command)
        assert status == 0, err
    assert build_parser().parse_args(["serve"]).token == "s3cret", "the server takes it the same way"


def test_an_error_of_the_servers_default_model_is_not_put_on_a_model_option_never_typed(
        demo_config, inputs, capsys, tmp_path):
    from backend.config import ModelSpec
    from backend.engine.engine import Engine
    from backend.engine.models import ModelRegistry, pick_device

    config = dataclasses.replace(demo_config, models={"broken": ModelSpec("broken", str(tmp_path / "gone"), "sd15")},
                                 default_model="broken")
    _, _, folder = inputs
    with ServerThread(config, Engine(ModelRegistry(config, *pick_device("cpu")))) as running:
        command = ["run", "img2img", "--image", folder / "in.png", "--prompt", "x", "--steps", 2,
                   "--out", folder / "out.png", "--server", running.url]
        status, _, err = easel_here(capsys, *command)
        assert status == 1 and "could not be loaded" in err and "--model" not in err, err
        status, _, err = easel_here(capsys, *command, "--model", "broken")
        assert status == 1 and "easel: --model: model 'broken' could not be loaded" in err, err
