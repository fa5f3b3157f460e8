"""The bundled Python client as a library, as a tool written against its docs uses it: a worker
thread and a UI thread on one client, pictures of the types a tool has at hand, mistakes it makes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from backend.server import ServerThread
from conftest import JobsAhead, picture, png
from netfaults import Blinker
from shared.client import Accepted, Cancelled, Client, EaselError, Progress, Queued, Result, Started
from shared.images import ImageData
from shared.job import Job

ROOT = Path(__file__).resolve().parent.parent


def test_the_ui_thread_asks_for_status_while_a_worker_thread_reads_a_job(client):
    # (status() from a second thread raised websockets' ConcurrencyError: two threads in recv)
    job = client.submit("generate", prompt="x", steps=4, width=64, height=64, seed=1, preview_every=1)
    events, answers = [], []

    def worker():
        events.extend(client.events(job))

    reader = threading.Thread(target=worker)
    reader.start()
    while not events:
        time.sleep(0.005)
    answers.append(client.status())
    answers.append(client.models())
    reader.join(60)
    assert [answer["type"] for answer in answers] == ["status", "models"]
    assert [event.step for event in events if isinstance(event, Progress)] == [1, 2, 3, 4]
    assert isinstance(events[-1], Result)


def sent_types(client: Client) -> list[str]:
    """The types of the messages ``client`` sends from now on (a list that grows)."""
    sent, send = [], client._send
    client._send = lambda message: (sent.append(message["type"]), send(message))[1]
    return sent


def test_a_waiting_job_hears_its_place_in_the_queue_go_down_until_it_starts(server):
    # `accepted.position` was the only count: behind a long queue the job looked stuck until `started`
    with JobsAhead(server.url, 2) as ahead, Client(server.url, queue_every=0.2) as painter:
        sent = sent_types(painter)
        job = painter.submit("generate", prompt="x", steps=2, width=64, height=64, seed=1)
        later, seen, asked_when_started = None, [], None
        for event in painter.events(job):
            seen.append(event)
            if isinstance(event, Accepted):
                # other traffic goes on while it waits: an upload with a second job, a status of one's own
                later = painter.submit("img2img", prompt="y", image=png(picture(64, 64)), strength=0.5, steps=2)
                assert painter.status()["queued"] == [job, later]
            if isinstance(event, (Accepted, Queued)) and ahead.jobs:
                ahead.pass_one()
            if isinstance(event, Started):
                asked_when_started = sent.count("status")
        started = next(index for index, event in enumerate(seen) if isinstance(event, Started))
        counts = [(type(event), event.position) for event in seen[:started]]
        # (0: asked in the moment between the job ahead ending and this one starting, while the server frees memory)
        assert counts in ([(Accepted, 2), (Queued, 1)], [(Accepted, 2), (Queued, 1), (Queued, 0)]), counts
        assert isinstance(seen[-1], Result)
        assert asked_when_started >= 2, "its place was never asked for"
        assert sent.count("status") == asked_when_started, "asked while the job ran"
        assert isinstance(list(painter.events(later))[-1], Result)
        assert not painter._replies["status"], "the asks' replies piled up"


def test_a_job_asked_about_while_it_waits_still_times_out_and_cancels(server):
    with JobsAhead(server.url, 1), Client(server.url, queue_every=0.1) as painter:
        job = painter.submit("generate", prompt="x", steps=2, width=64, height=64, seed=1)
        sent = sent_types(painter)
        with pytest.raises(EaselError, match="did not end within 0.5s"):
            seen = []
            for event in painter.events(job, timeout=0.5):
                seen.append(event)
        assert seen == [Accepted(job, 1)], "a count that did not change came again"
        assert sent.count("status") >= 3, sent
        del sent[:]
        painter.cancel(job)
        assert list(painter.events(job)) == [Cancelled(job, "queued")]
        assert sent == ["cancel"]


def test_two_threads_each_run_their_own_job_on_one_client(client):
    results = {}

    def run(seed: int) -> None:
        results[seed] = client.run("generate", prompt="x", steps=2, width=64, height=64, seed=seed)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert {seed: result.images[0].seed for seed, result in results.items()} == {3: 3, 4: 4}


@pytest.mark.parametrize("given, named, how", [
    (picture(64, 64), "mask", "ImageData.from_pil(picture)"),
    (png(picture(64, 64)).data, "mask", "ImageData.from_png(data)"),
    (np.zeros((64, 64), np.uint8), "mask", "ImageData.from_array(array)"),
    ("mask.png", "mask", "ImageData.from_file(path)"),
])
def test_a_picture_of_the_wrong_type_is_named_before_anything_is_sent(client, given, named, how):
    image = png(picture(64, 64))
    with pytest.raises(TypeError, match=rf"`{named}` must be ImageData .*{how.replace('(', '.').replace(')', '.')}"):
        client.submit("inpaint", prompt="x", image=image, mask=given, steps=2)
    # (the image had been uploaded before the mask failed, and the job stayed pending for ever)
    assert not client._pending and not client._unsent
    assert client.upload(image)["frame"] == "up-1", "the image was not uploaded"
    with pytest.raises(TypeError, match=r"`references\[1\].image` .* not bytes"):
        client.submit("img2img", prompt="x", image=image, steps=2, references=[{"image": image}, {"image": b"PNG"}])


def test_a_photo_given_to_from_file_says_which_call_takes_it(tmp_path):
    from shared.errors import ProtocolError

    picture(64, 64).save(tmp_path / "photo.jpg")
    with pytest.raises(ProtocolError, match=r"photo.jpg is not a PNG file \(it is a JPEG file\): .*from_pil"):
        ImageData.from_file(tmp_path / "photo.jpg")
    (tmp_path / "cut-short.png").write_bytes(b"")
    with pytest.raises(ProtocolError, match=r"cut-short.png is empty \(0 bytes\)"):
        ImageData.from_file(tmp_path / "cut-short.png")


def test_a_job_built_with_a_wrong_name_or_shape_says_which():
    with pytest.raises(TypeError, match="no job parameter 'stenght'; did you mean 'strength'"):
        Job.create("img2img", stenght=0.5)
    with pytest.raises(TypeError, match=r"`control\[0\]` has no field 'kind'; a ControlUnit has type, image"):
        Job.create("img2img", control=[{"kind": "canny"}])
    with pytest.raises(TypeError, match=r"`control\[1\]` must be a ControlUnit or a dict of its fields, not str"):
        Job.create("img2img", control=[{"type": "canny"}, "depth"])
    with pytest.raises(TypeError, match=r"`references\[0\]` needs `image`"):
        Job.create("img2img", references=[{"weight": 0.5}])
    with pytest.raises(TypeError, match=r"`control\[0\]` needs `type`"):
        Job.create("img2img", control=[{"scale": 0.5}])
    with pytest.raises(TypeError, match=r"`control` must be a list of ControlUnits or dicts, not one dict"):
        Job.create("img2img", control={"type": "canny"})


def test_a_job_id_is_given_as_the_wire_names_it(client):
    # (submit's own first parameter was called `job`: job="mine" raised "got multiple values")
    result = client.run("generate", job="mine", prompt="x", steps=2, width=64, height=64, seed=0)
    assert result.job == "mine"


def test_pictures_convert_to_and_from_pillow_and_numpy(client):
    rgb = np.asarray(picture(96, 64))
    for given in (ImageData.from_pil(picture(96, 64)), ImageData.from_pil(picture(96, 64).convert("CMYK")),
                  ImageData.from_array(rgb), ImageData.from_array(rgb[..., 0].copy())):
        result = client.run("img2img", prompt="x", image=given, strength=0.5, steps=2, seed=5)
        layer = result.images[0]
        assert layer.image.to_pil().size == (96, 64) and layer.image.to_array().shape == (64, 96, 4)
        assert (layer.seed, layer.offset) == (5, (0, 0))
    assert np.array_equal(ImageData.from_array(rgb).to_array()[..., :3], rgb)
    with pytest.raises(TypeError, match=r"uint8 array .* dtype float32 \(scale floats to 0-255"):
        ImageData.from_array(rgb.astype(np.float32))


def test_a_32_bit_grey_mask_from_pillow_is_sent_as_the_server_reads_it(client):
    # (a mode "I" picture, as Pillow opens a 32-bit TIFF mask: from_pil raised "cannot write mode I as PNG")
    from PIL import Image

    mask = np.zeros((64, 96), np.int32)
    mask[20:40, 30:60] = 255
    job = dict(prompt="x", image=ImageData.from_pil(picture(96, 64)), steps=2, seed=3)
    layers = [client.run("inpaint", mask=ImageData.from_pil(Image.fromarray(values)), **job).images[0].image.to_array()
              for values in (mask.astype(np.uint8), mask, mask * 257)]  # 8-bit, and 32-bit with 8- and 16-bit values
    assert np.array_equal(layers[1], layers[0]) and np.array_equal(layers[2], layers[0])


def test_a_phone_photo_from_pillow_is_sent_upright(tmp_path):
    # Image.open keeps a JPEG's pixels as stored; from_pil sent a portrait photo (or a control map or reference
    # taken from one) sideways, where the CLI and every viewer show it upright.
    from PIL import Image, ImageOps

    upright = picture(96, 64)
    for orientation in range(1, 9):
        stored = upright.transpose(Image.Transpose.TRANSPOSE) if orientation >= 5 else upright.copy()
        exif = stored.getexif()
        exif[0x0112] = orientation
        stored.save(tmp_path / "photo.jpg", exif=exif, quality=100)
        opened = Image.open(tmp_path / "photo.jpg")
        expected = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
        sent = ImageData.from_pil(opened).to_array()[..., :3]
        assert sent.shape == expected.shape and np.array_equal(sent, expected), orientation


def test_a_job_that_is_not_waited_for_raises_instead_of_blocking(client):
    with pytest.raises(EaselError, match="no job nope of this client") as caught:
        next(client.events("nope"))
    assert caught.value.code == "unknown_job" and caught.value.job == "nope"


def test_run_leaves_nothing_behind(client):
    for steps in (2, 1):  # a result, then an error (too few steps at strength 0.5)
        try:
            result = client.run("img2img", prompt="x", image=png(picture(64, 64)), strength=0.5, steps=steps)
        except EaselError:
            pass
    client.cancel(result.job)  # too late: the server refuses it, and nobody reads that
    assert client.status()["type"] == "status"
    # (each run kept an empty queue for its job: a batch of thousands of jobs grew without end)
    assert not any(client._jobs.values()) and len(client._jobs) <= 1


def test_a_closed_client_says_to_connect(server):
    easel = Client(server.url).connect()
    job = easel.submit("generate", prompt="x", steps=2, width=64, height=64)
    easel.close()
    # (events of a job submitted before close() raised AttributeError: 'NoneType' object has no attribute 'recv')
    with pytest.raises(EaselError, match=r"not connected: call connect\(\)"):
        list(easel.events(job))


def test_a_reconnect_on_a_connection_still_open_keeps_the_session_and_its_job(server):
    # reconnect() closed the old connection with code 1000, which ends a session at once: the resume then got
    # `unknown_session` and the running job was cancelled.
    with Client(server.url) as client:
        session = client.session
        job = client.submit("generate", prompt="x", steps=12, width=128, height=128, seed=1)
        events = client.events(job)
        next(event for event in events if isinstance(event, Progress))
        client.reconnect()
        assert client.session == session
        assert isinstance(list(client.events(job))[-1], Result)


def test_a_long_drop_names_the_job_to_follow_after_reconnecting(server):
    link = Blinker(server.url)
    try:
        with Client(link.url) as client:
            job = client.submit("generate", prompt="x", steps=4, width=64, height=64, seed=1)
            with pytest.raises(EaselError) as caught:
                for event in client.events(job):
                    if not isinstance(event, Progress):
                        link.cut(1.5)  # longer than the client's own one resume
            # (it said "refused the connection: no close frame received or sent", and named no job)
            error = caught.value
            assert error.dropped and error.job == job and error.code == "unreachable"
            assert "cut during the opening handshake" in str(error) or "network cut: try again" in str(error)
            client.reconnect_within(10)
            assert isinstance(list(client.events(error.job))[-1], Result)
    finally:
        link.close()


def test_a_restarted_server_leaves_the_client_connected_afresh(demo_config, engine):
    # Servers of their own: the first one's session stays detached after the client has gone to the second.
    first, restarted = ServerThread(demo_config, engine).start(), ServerThread(demo_config, engine).start()
    link = Blinker(first.url)
    try:
        with Client(link.url) as client:
            job = client.submit("generate", prompt="x", steps=4, width=64, height=64, seed=1)
            with pytest.raises(EaselError) as caught:
                for _ in client.events(job):
                    host, port = restarted.url.removeprefix("ws://").rstrip("/").split(":")
                    link.upstream = (host, int(port))  # the same address, a server that never saw the session
                    link.cut(0)
            error = caught.value
            assert (error.code, error.job) == ("unknown_session", job)
            assert f"new session, but its unfinished jobs are lost: {job}; submit them again" in str(error)
            # (the connection was left without a session: every request then got `hello_required`)
            assert client.status()["type"] == "status"
            with pytest.raises(EaselError, match="no job"):
                next(client.events(job))
            deadline = time.monotonic() + 30
            while first.server.queue.running and time.monotonic() < deadline:  # the engine runs one job at a time
                time.sleep(0.05)
            assert isinstance(client.run("generate", prompt="x", steps=2, width=64, height=64), Result)
    finally:
        link.close()
        restarted.stop()
        first.stop()


def test_connecting_again_ends_the_first_connection(server):
    with Client(server.url) as client:
        first = client._ws
        client.connect()
        # (the first socket stayed open, its session alive at the server, until the process ended)
        assert first.state.name == "CLOSED" and client.status()["type"] == "status"


def test_closing_from_the_ui_thread_says_who_closed(server):
    client = Client(server.url).connect()
    seen, failed = [], []

    def worker():
        try:
            client.run("generate", prompt="x", steps=4, width=64, height=64, on_event=seen.append)
        except EaselError as exc:
            failed.append(exc)

    reader = threading.Thread(target=worker)
    reader.start()
    while not seen:
        time.sleep(0.005)
    client.close()
    reader.join(20)
    # (it said "the Easel server closed the connection")
    assert "ended by close() on this client" in str(failed[0]) and failed[0].code == "closed"


@pytest.mark.parametrize("image, words", [
    (ImageData("rgba8", 10, 10, b"short"), "rgba8 image of 10x10 needs 400 bytes, got 5"),
    (ImageData("jpeg", 64, 64, b"\xff\xd8\xff"), "`format` must be one of png, webp, rgba8, l8; got 'jpeg'"),
])
def test_an_image_whose_bytes_are_not_what_it_says_names_the_job_and_field(client, image, words):
    # (the server refused the upload with no job named, and the job's own error stayed queued at the client)
    with pytest.raises(EaselError, match=words) as caught:
        client.run("img2img", job="bad-bytes", prompt="x", image=png(picture(64, 64)), strength=0.5, steps=2,
                   control=[{"type": "canny", "image": image}])
    assert (caught.value.job, caught.value.field) == ("bad-bytes", "control[0].image")
    assert not client._pending and client.status()["type"] == "status" and not any(client._jobs.values())


def test_an_interrupted_run_cancels_its_job(client):
    class Stop(Exception):
        pass

    def interrupt(event):
        if isinstance(event, Progress):
            raise Stop  # as Ctrl+C, or a notebook's interrupt, would in the middle of run()

    with pytest.raises(Stop):
        client.run("generate", prompt="x", steps=150, width=64, height=64, on_event=interrupt)
    # (the job ran on to its 150th step, and its events piled up at the client)
    deadline = time.monotonic() + 5
    while client.status()["running"] is not None:
        assert time.monotonic() < deadline, "the interrupted job still runs"
        time.sleep(0.05)
    assert isinstance(client.run("generate", prompt="x", steps=2, width=64, height=64), Result)
    assert not client._pending and not client._abandoned and not any(client._jobs.values())


def test_a_job_id_still_in_use_is_refused_without_touching_its_job(client):
    first = client.submit("generate", job="twice", prompt="x", steps=4, width=64, height=64)
    with pytest.raises(EaselError, match="job twice of this client is still queued or running") as caught:
        client.submit("generate", job="twice", prompt="y", steps=2, width=64, height=64)
    assert (caught.value.code, caught.value.field, caught.value.ends_job) == ("duplicate_job", "job", False)
    # (the server's refusal was filed as an event of the first job: its events() raised it)
    assert isinstance(list(client.events(first))[-1], Result)
    assert client.run("generate", job="twice", prompt="y", steps=2, width=64, height=64).job == "twice"


def test_a_tls_failure_says_why_in_reason(server):
    with pytest.raises(EaselError) as caught:
        Client(server.url.replace("ws://", "wss://")).connect()
    # (`reason` was empty for TLS failures alone)
    assert caught.value.code == "unreachable" and "TLS handshake failed" in caught.value.reason
    assert caught.value.tls  # (hosts stop retrying: only the user can mend it)
    with pytest.raises(EaselError) as caught:
        Client("ws://127.0.0.1:9/").connect()  # nothing listens there: worth trying again later
    assert caught.value.code == "unreachable" and not caught.value.tls


def test_an_interrupted_preprocess_leaves_nothing_behind(client):
    class Stop(Exception):
        pass

    def interrupt(event):
        raise Stop

    with pytest.raises(Stop):
        client.preprocess("canny", png(picture(64, 64)), on_event=interrupt)
    assert client.preprocess("canny", png(picture(64, 64))).width == 64
    assert not client._pending and not client._abandoned and not any(client._jobs.values())


def test_a_run_that_takes_too_long_is_cancelled_and_the_client_goes_on(client):
    began = time.monotonic()
    with pytest.raises(EaselError, match=r"did not end within 0.5s, so it was cancelled") as caught:
        client.run("generate", job="slow", prompt="x", steps=150, width=64, height=64, timeout=0.5)
    assert (caught.value.code, caught.value.job) == ("timeout", "slow")
    assert time.monotonic() - began < 5, "it gave up at its timeout, not at the job's end"
    deadline = time.monotonic() + 5
    while client.status()["running"] is not None:  # (without a timeout, only abort() ended the wait, and the
        assert time.monotonic() < deadline, "the timed-out job still runs"  # connection with it)
        time.sleep(0.05)
    assert isinstance(client.run("generate", prompt="x", steps=2, width=64, height=64, timeout=60), Result)
    assert not client._pending and not client._abandoned and not any(client._jobs.values())


def test_events_with_a_timeout_leave_the_job_running_to_be_read_again(client):
    job = client.submit("generate", prompt="x", steps=40, width=64, height=64, seed=5)
    with pytest.raises(EaselError) as caught:
        for _ in client.events(job, timeout=0.01):
            pass
    assert (caught.value.code, caught.value.job, caught.value.ends_job) == ("timeout", job, False)
    assert isinstance(list(client.events(job))[-1], Result), "the job went on and its result came"


def test_a_server_that_stops_answering_is_given_up_quietly_at_the_keepalive(server):
    # As a console tool that configured no logging runs it: websockets' "keepalive ping failed" traceback
    # was printed to its stderr, beside the EaselError that already said what happened.
    link = Blinker(server.url)
    script = ("import sys\nfrom shared.client import Client, EaselError\n"
              "easel = Client(sys.argv[1], keepalive=0.3, open_timeout=1).connect()\n"
              "print('connected', flush=True)\nsys.stdin.readline()\n"
              "try:\n    easel.status()\nexcept EaselError as exc:\n    print('gave up:', exc.code)\n")
    tool = subprocess.Popen([sys.executable, "-c", script, link.url], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tool.stdout.readline() == "connected\n"
        link.frozen = True  # as a server stopped with SIGSTOP: nothing passes, nothing closes
        out, err = tool.communicate("\n", timeout=60)
    finally:
        tool.kill()
        link.frozen = False
        link.close()
    assert "gave up: unreachable" in out or "gave up: closed" in out, out + err
    assert "Traceback" not in err and "keepalive" not in err, err


def test_a_result_shown_in_a_notebook_is_a_line_not_its_bytes(client):
    result = client.run("img2img", image=ImageData.from_pil(picture(64, 64)), prompt="x", steps=2, strength=0.5)
    shown = repr(result)
    assert "data=<" in shown and " bytes>" in shown and len(shown) < 2000, shown[:300]


@pytest.mark.parametrize("typed, meant", [("localhost:8760", "ws://localhost:8760/"),
                                          ("http://127.0.0.1:8760/", "ws://127.0.0.1:8760/"),
                                          ("https://gpu-box.local", "wss://gpu-box.local:8760/")])
def test_an_address_typed_as_a_browsers_says_the_websocket_one(typed, meant):
    with pytest.raises(EaselError, match=f"did you mean {meant}") as caught:
        Client(typed).connect()
    assert caught.value.code == "bad_url"


def test_a_call_after_abort_says_the_client_ended_it(server):
    easel = Client(server.url, name="pytest").connect()
    easel.abort()
    with pytest.raises(EaselError, match=r"ended by abort\(\) on this client: call connect\(\)") as caught:
        easel.status()
    assert caught.value.code == "closed"
    assert easel.connect().status()["type"] == "status"
    easel.close()


@pytest.fixture(scope="module")
def strict(demo_config, engine):
    """A server with small limits: 600 pixels a side, 360000 in all, a 1 MiB message, 10 steps, batch 2."""
    limits = dataclasses.replace(demo_config.limits, max_side=600, max_pixels=600 * 600, max_steps=10, max_batch=2,
                                 max_generate_side=512, max_message_bytes=2**20)
    with ServerThread(dataclasses.replace(demo_config, limits=limits), engine) as running:
        yield running


OVER_LIMITS = [  # (what is asked, the field refused, words of the server's sentence)
    (dict(mode="upscale", image=(300, 200), scale=4, upscaler="lanczos"), "scale",
     "upscaling the 300x200 picture to 1200x800 is over this server's limit of 600 pixels a side"),
    (dict(mode="img2img", image=(700, 50), strength=0.5), "image", "`image` is 700x50; this server accepts at most"),
    (dict(mode="img2img", image=(64, 64), strength=0.5, control=[{"type": "canny", "image": (50, 700)}]),
     "control[0].image", "`control[0].image` is 50x700"),
    (dict(mode="expand", image=(300, 200), expand_left=400), "expand_left", "the expanded canvas would be 700x200"),
    # (the side asked for is named: an expand to the right over the limit was refused naming `expand_left`)
    (dict(mode="expand", image=(300, 200), expand_right=400), "expand_right", "the expanded canvas would be 700x200"),
    (dict(mode="expand", image=(300, 200), expand_bottom=500), "expand_bottom", "the expanded canvas would be 300x700"),
    (dict(mode="generate", width=600, height=64), "width", "width 600 is over this server's limit of 512"),
    (dict(mode="img2img", image=(64, 64), strength=0.5, steps=11), "steps", "steps 11 is over this server's limit"),
    (dict(mode="generate", width=64, height=64, batch=3), "batch", "batch 3 is over this server's limit of 2"),
    (dict(mode="img2img", image=np.zeros((512, 512, 4), np.uint8), strength=0.5), "image",
     "bytes is over this server's limit of 1048576"),  # (a raw rgba8 frame)
]


def _as_job(asked: dict) -> Job:
    """A job of ``OVER_LIMITS``: (width, height) stands for a PNG of that size, an array for raw pixels."""
    def image(given):
        return png(picture(*given)) if isinstance(given, tuple) else ImageData.from_array(given)

    params = {key: image(value) if key == "image" else value for key, value in asked.items() if key != "mode"}
    params["control"] = [dict(unit, image=image(unit["image"])) for unit in params.get("control", ())]
    return Job.create(asked["mode"], steps=params.pop("steps", 2), **params)


@pytest.mark.parametrize("asked, field, words", OVER_LIMITS)
def test_a_job_over_the_servers_limits_is_refused_before_anything_is_uploaded(strict, monkeypatch, asked, field,
                                                                              words):
    """A 6000x4000 photo asked x 4 was uploaded for 30-60 s by every client (Python tools, the Krita docker, the
    WebUI tab) only to be refused: the welcome's limits refuse it at once, in the server's words."""
    sent = []  # every frame: binary ones are uploads
    send_frame = Client._send_frame
    monkeypatch.setattr(Client, "_send_frame", lambda self, frame: sent.append(frame) or send_frame(self, frame))
    with Client(strict.url) as easel:
        sent.clear()  # (its hello)
        with pytest.raises(EaselError) as refused:
            easel.submit(_as_job(asked))
        assert not sent and not easel._pending, "nothing was sent"
        assert (refused.value.field, refused.value.ends_job) == (field, True) and words in refused.value.message
        # The same job sent to the server without the check: its own refusal is the one the client gave
        monkeypatch.setattr(Client, "_limits", lambda self: {})
        with pytest.raises(EaselError) as answered:
            easel.run(_as_job(asked))
        assert (answered.value.code, answered.value.message) == (refused.value.code, refused.value.message)
        assert any(isinstance(frame, bytes) for frame in sent) == ("image" in asked)


def test_a_job_within_the_servers_limits_runs_and_a_preprocess_over_them_is_refused(strict, monkeypatch):
    sent = []
    send_frame = Client._send_frame
    monkeypatch.setattr(Client, "_send_frame", lambda self, frame: sent.append(frame) or send_frame(self, frame))
    with Client(strict.url) as easel:
        sent.clear()
        result = easel.run("upscale", image=png(picture(150, 100)), scale=4, upscaler="lanczos", steps=2)
        assert (result.images[0].image.width, result.images[0].image.height) == (600, 400)
        assert sum(isinstance(frame, bytes) for frame in sent) == 1, "its picture was uploaded"
        sent.clear()
        with pytest.raises(EaselError, match="`image` is 700x50; this server accepts at most") as refused:
            easel.preprocess("canny", png(picture(700, 50)))
        assert (refused.value.code, refused.value.field, sent) == ("limit_exceeded", "image", [])
