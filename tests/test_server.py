"""Queue, cancel, several clients, bad input, security, and traffic against the schema."""

import base64
import dataclasses
import json
import struct
import threading
import time
import zlib

import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from backend.config import Config, ConfigError, Limits
from backend.server import ServerThread
from conftest import picture, png, rect_mask
from schema_check import validator
from shared.client import Accepted, Cancelled, Client, EaselError, Progress, Result
from shared.images import ImageData, encode_frame

LONG = {"prompt": "slow", "steps": 150, "seed": 0, "width": 512, "height": 512}


def test_cancel_a_running_job_stops_within_a_step(client):
    image = picture(512, 512)
    quick = time.perf_counter()
    client.run("inpaint", prompt="x", image=png(image), mask=png(rect_mask(image.size, (0, 0, 512, 512))), steps=4,
               seed=0)
    per_step = (time.perf_counter() - quick) / 4
    job = client.submit("generate", **LONG)
    seen = []
    for event in client.events(job):
        seen.append(event)
        if isinstance(event, Progress) and event.step == 2:
            cancelled_at = time.perf_counter()
            client.cancel(job)
    assert isinstance(seen[-1], Cancelled) and seen[-1].stage == "running"
    assert max(e.step for e in seen if isinstance(e, Progress)) < 10
    assert time.perf_counter() - cancelled_at < 30 * per_step + 2


def test_a_job_cancelled_mid_run_leaves_nothing_on_for_the_next_job(client):
    # cancelled between two steps, with a LoRA, an IP-Adapter reference and a ControlNet switched on: the next
    # job without them must give the pixels it gave before
    image, mask = png(picture(128, 128)), png(rect_mask((128, 128), (30, 30, 100, 100)))
    plain = dict(prompt="a door", image=image, mask=mask, steps=4, seed=5, strength=0.9)
    before = client.run("inpaint", **plain).images[0].image.data
    job = client.submit("inpaint", **dict(plain, steps=150), loras=[{"name": "demo-lora", "weight": 1.2}],
                        references=[{"image": png(picture(96, 96, seed=2)), "mode": "style"}],
                        control=[{"type": "canny", "preprocess": "on"}])
    for event in client.events(job):
        if isinstance(event, Progress) and event.step == 2:
            client.cancel(job)
    assert isinstance(event, Cancelled) and event.stage == "running"
    assert client.run("inpaint", **plain).images[0].image.data == before


def test_cancel_a_queued_job(server):
    with Client(server.url) as first, Client(server.url) as second:
        running = first.submit("generate", **LONG)
        # accepted before the second submit is sent: two connections' messages may reach the server in either order
        assert isinstance(next(first.events(running)), Accepted)
        queued = second.submit("generate", **{**LONG, "steps": 3})
        assert isinstance(next(second.events(queued)), Accepted)
        second.cancel(queued)
        assert list(second.events(queued))[-1] == Cancelled(queued, "queued")
        first.cancel(running)
        assert isinstance(list(first.events(running))[-1], Cancelled)


def test_unknown_job_cancel_is_an_error_and_connection_continues(client):
    client.cancel("no-such-job")
    with pytest.raises(EaselError) as caught:
        list(client.events("no-such-job"))
    assert caught.value.code == "unknown_job"
    assert client.status()["running"] is None


def test_two_clients_both_finish(server):
    results = {}

    def work(name, seed):
        with Client(server.url, name=name) as c:
            image = picture(256, 256, seed)
            results[name] = c.run("inpaint", prompt=name, image=png(image),
                                  mask=png(rect_mask(image.size, (50, 50, 120, 120))), steps=3, seed=seed)

    threads = [threading.Thread(target=work, args=(f"client-{i}", i)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == ["client-0", "client-1"]
    assert all(isinstance(r, Result) for r in results.values())


def test_a_client_that_leaves_has_its_jobs_dropped(server):
    leaver = Client(server.url).connect()
    running = leaver.submit("generate", **LONG)
    leaver.submit("generate", **LONG)
    events = leaver.events(running)
    while not isinstance(next(events), Progress):
        pass
    leaver.close()
    queue, deadline = server.server.queue, time.perf_counter() + 20
    while (queue.running or len(queue)) and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert queue.running is None and len(queue) == 0, "queued job dropped, running job cancelled"
    with Client(server.url) as stayer:
        assert isinstance(stayer.run("generate", prompt="x", steps=2, width=64, height=64, seed=0), Result)


BAD_SUBMITS = [
    ({"mode": "inpaint", "model": "nope"}, "unknown_model", "model"),
    ({"mode": "img2img", "image": {"data": "aGVsbG8=", "format": "png"}}, "bad_image", "image"),
    ({"mode": "img2img", "image": {"data": "%%%"}}, "bad_image", "image"),
    ({"mode": "img2img", "image": {"frame": "never-sent"}}, "unknown_image", "image"),
    ({"mode": "inpaint", "mask": "SMALL_MASK"}, "size_mismatch", "mask"),
    ({"mode": "inpaint", "mask": "EMPTY_MASK"}, "empty_mask", "mask"),
    ({"mode": "img2img", "strength": 0.04, "steps": 20}, "too_few_steps", "strength"),
    ({"mode": "remove", "steps": 2}, "too_few_steps", "steps"),  # strength 1: only more steps help
    ({"mode": "img2img", "steps": 100000}, "limit_exceeded", "steps"),
    ({"mode": "img2img", "batch": 1000}, "limit_exceeded", "batch"),
    ({"mode": "generate", "width": 100000, "height": 64}, "limit_exceeded", "width"),
    ({"mode": "img2img", "image": "HUGE"}, "limit_exceeded", "image"),
    ({"mode": "img2img", "image": "BOMB"}, "limit_exceeded", "image"),
    ({"mode": "img2img", "strength": 2}, "invalid_field", "strength"),
    ({"mode": "generate", "image": "IMAGE"}, "invalid_field", "image"),
    ({"mode": "inpaint", "mask": None}, "invalid_field", "mask"),
    ({"mode": "img2img", "image": "PNG_AS_WEBP"}, "bad_image", "image"),
    ({"mode": "img2img", "width": 512}, "invalid_field", "width"),
]


def png_claiming(width, height):
    """A tiny PNG whose header claims a huge size (a decompression bomb's first bytes)."""
    data = bytearray(png(Image.new("L", (1, 1))).data)
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return ImageData("png", width, height, bytes(data))


@pytest.mark.parametrize("change, code, field", BAD_SUBMITS)
def test_bad_submit_gets_a_named_error_and_the_connection_keeps_working(client, change, code, field):
    image = picture(128, 96)
    specials = {
        "IMAGE": png(image), "SMALL_MASK": png(rect_mask((64, 48), (0, 0, 10, 10))),
        "EMPTY_MASK": png(rect_mask(image.size, (0, 0, 0, 0))),
        "HUGE": png(rect_mask((9000, 8), (0, 0, 1, 1))),
        "BOMB": png_claiming(60000, 60000),
        "PNG_AS_WEBP": {"data": png(image).to_base64(), "format": "webp"},
    }
    params = {"prompt": "x", "steps": 3, "image": png(image), "mask": png(rect_mask(image.size, (10, 10, 40, 40))),
              **change}
    params = {k: specials.get(v, v) if isinstance(v, str) else v for k, v in params.items()}
    mode = params.pop("mode")
    if mode == "generate" and change.get("image") is None:
        params.pop("image")
    if mode not in ("inpaint", "remove"):
        params.pop("mask", None)
    if params.get("mask", 0) is None:
        params.pop("mask")
    with pytest.raises(EaselError) as caught:
        client.run(mode, **params)
    assert (caught.value.code, caught.value.field) == (code, field), caught.value
    assert caught.value.message
    ok = client.run("img2img", prompt="fine", image=png(image), steps=4, strength=0.5, seed=0)
    assert isinstance(ok, Result)


def raw_session(url, **kwargs):
    ws = connect(url, **kwargs)
    ws.send(json.dumps({"type": "hello", "protocol": 1}))
    assert json.loads(ws.recv())["type"] == "welcome"
    return ws


def next_error(ws):
    while True:
        message = ws.recv()
        if isinstance(message, str) and json.loads(message)["type"] == "error":
            return json.loads(message)


@pytest.mark.parametrize("frame, code", [
    ("{not json", "bad_json"),
    ('{"type": "dance"}', "unknown_type"),
    ('{"type": "submit", "mode": "inpaint", "steps": "many"}', "invalid_field"),
    (b"\x00\x00\x00\x05{bad}", "bad_image"),
    (encode_frame({"image": "x", "role": "image", "format": "rgba8", "width": 4, "height": 4}, b"123"), "bad_image"),
    (encode_frame({"image": "x", "role": "result", "format": "png", "width": 1, "height": 1}, b"\x89PNG\r\n\x1a\n"),
     "invalid_field"),
])
def test_malformed_frames_get_errors_on_a_live_connection(server, frame, code):
    with raw_session(server.url) as ws:
        ws.send(frame)
        assert next_error(ws)["code"] == code
        ws.send(json.dumps({"type": "status"}))
        assert json.loads(ws.recv())["type"] == "status"


def test_oversize_message_is_refused_and_the_connection_survives(demo_config, engine):
    config = dataclasses.replace(demo_config, limits=Limits(max_message_bytes=50_000))
    with ServerThread(config, engine) as small, raw_session(small.url) as ws:
        ws.send(encode_frame({"image": "big", "role": "image", "format": "rgba8", "width": 200, "height": 100},
                             bytes(80_000)))
        assert next_error(ws)["code"] == "frame_too_large"
        ws.send(json.dumps({"type": "status"}))
        assert json.loads(ws.recv())["type"] == "status"


def test_messages_before_hello_are_refused(server):
    with connect(server.url) as ws:
        ws.send(json.dumps({"type": "status"}))
        assert json.loads(ws.recv())["code"] == "hello_required"


def test_token_is_required_when_configured(demo_config, engine):
    config = dataclasses.replace(demo_config, token="s3cret")
    with ServerThread(config, engine) as guarded:
        with pytest.raises(EaselError) as caught:
            Client(guarded.url).connect()
        assert caught.value.code == "unauthorized"
        with pytest.raises(EaselError):
            Client(guarded.url, token="wrong").connect()
        with Client(guarded.url, token="s3cret") as ok:
            assert ok.models()["default"] == "demo"


def test_public_address_needs_a_token():
    with pytest.raises(ConfigError):
        Config(host="0.0.0.0").check()
    Config(host="0.0.0.0", token="t").check()


@pytest.mark.parametrize("origins", ["http://localhost:5173", ["http://localhost:5173/"], ["https://Example.app"],
                                     ["https://example.app:443"], ["localhost:5173"], [5173]])
def test_allowed_origins_that_no_browser_would_send_are_refused_at_start(origins):
    # Compared as exact strings, each of these silently refused every page (a bare string letter by letter).
    with pytest.raises(ConfigError, match="allowed_origins"):
        Config(allowed_origins=origins).check()
    Config(allowed_origins=["http://localhost:5173", "https://example.app", "null", "chrome-extension://abc"]).check()


@pytest.mark.parametrize("origin, said", [
    ("http://localhost:*", "without wildcards"), ("*", "without wildcards"),
    ("file://", "sends the origin null"), ("file:///home/me/page.html", "serve the page over http://localhost")])
def test_a_wildcard_or_a_file_origin_is_refused_at_start_saying_what_to_allow(origin, said):
    # `http://localhost:*` started a server that refused every page; `file://` (what a file page's location.origin
    # reads in Chromium) was told to "write the page's location.origin", which it was.
    with pytest.raises(ConfigError) as caught:
        Config(allowed_origins=[origin]).check()
    assert said in str(caught.value), caught.value


def test_foreign_browser_origins_are_refused_with_a_reason_a_page_can_read(server):
    # A refused handshake (HTTP 403) reaches a web page as a bare close 1006 with no reason, so a developer
    # could not tell a foreign origin from a server that is down. Now the page's `onclose` reads 1008 and why.
    before = set(server.server.state.sessions)
    with connect(server.url, origin="https://evil.example") as ws:
        with pytest.raises(ConnectionClosed) as caught:
            ws.send(json.dumps({"type": "hello", "protocol": 1}))  # (unless the close came first)
            ws.recv(timeout=30)  # the close: no welcome, nothing the page sent was read
    assert caught.value.rcvd.code == 1008
    assert caught.value.rcvd.reason == "origin https://evil.example is not allowed: add it with easel serve " \
        "--allow-origin or [server] allowed_origins"
    assert not set(server.server.state.sessions) - before, "no session was opened for it"
    with connect(server.url, origin="https://" + "e" * 200 + ".example") as ws:
        with pytest.raises(ConnectionClosed) as caught:
            ws.recv(timeout=30)
    assert caught.value.rcvd.reason == "origin not allowed: see easel serve --allow-origin or [server] " \
        "allowed_origins", "fits a close frame"
    with connect(server.url, origin=f"http://127.0.0.1:{server.server.port}") as ws:
        ws.send(json.dumps({"type": "hello", "protocol": 1}))
        assert json.loads(ws.recv())["type"] == "welcome"


def test_an_origin_in_allowed_origins_is_served(demo_config, engine):
    config = dataclasses.replace(demo_config, allowed_origins=["http://localhost:5173"])
    with ServerThread(config, engine) as served:
        with connect(served.url, origin="http://localhost:5173") as ws:
            ws.send(json.dumps({"type": "hello", "protocol": 1}))
            assert json.loads(ws.recv(timeout=30))["type"] == "welcome"


def refusal(url, origin):
    with connect(url, origin=origin) as ws:
        with pytest.raises(ConnectionClosed) as caught:
            ws.recv(timeout=30)
    return caught.value.rcvd.code, caught.value.rcvd.reason


def test_a_refused_page_is_told_how_to_get_in(demo_config, engine, caplog):
    # A page from a file (origin `null`) was told to "add it to [server] allowed_origins", which the docs warn
    # against (every file page would get in), and the server's log named the origin and nothing to do; a dev
    # server opened as 127.0.0.1 when localhost is allowed was told the same, and neither named --allow-origin.
    config = dataclasses.replace(demo_config, allowed_origins=["http://localhost:5173"])
    with ServerThread(config, engine) as served, caplog.at_level("WARNING", logger="backend.server.transport"):
        assert refusal(served.url, "null") == (1008, "origin null (a file:// page or a sandboxed frame) is not "
                                               "allowed: serve the page over http://localhost")
        assert refusal(served.url, "http://127.0.0.1:5173") == (
            1008, "origin http://127.0.0.1:5173 is not allowed; http://localhost:5173 is: open the page as "
            "http://localhost:5173")
        assert refusal(served.url, "http://localhost:3000")[1].endswith("easel serve --allow-origin or [server] "
                                                                        "allowed_origins")
    said = [r.getMessage() for r in caplog.records if "refused a connection from origin" in r.getMessage()]
    assert len(said) == 3
    assert "serve the page over http://localhost" in said[0] and "--allow-origin http://localhost:PORT" in said[0]
    assert "open the page as http://localhost:5173" in said[1]
    assert "start easel serve with --allow-origin http://localhost:3000 or add it to [server] allowed_origins" \
        in said[2]


def test_traffic_validates_against_the_schema(server):
    server_message, client_message = validator("server_message"), validator("client_message")
    header = validator("frame_header")
    image = picture(128, 128)
    sent = [
        {"type": "hello", "protocol": 1, "client": "schema-test"},
        {"type": "models"}, {"type": "status"},
        {"type": "submit", "job": "j1", "mode": "inpaint", "prompt": "x", "steps": 4, "seed": 1,
         "preview_every": 2, "image": {"data": png(image).to_base64(), "format": "png"},
         "mask": {"data": png(rect_mask(image.size, (10, 10, 60, 60))).to_base64(), "format": "png"}},
        {"type": "submit", "job": "j2", "mode": "generate", "prompt": "x", "steps": 2, "width": 64, "height": 64,
         "inline": True},
        {"type": "submit", "job": "j3", "mode": "generate", "steps": 1000},
        {"type": "cancel", "job": "nope"},
    ]
    received = []
    with connect(server.url) as ws:
        for message in sent:
            client_message.validate(message)
            ws.send(json.dumps(message))
        finished = set()
        while finished != {"j1", "j2", "j3", "nope"}:
            raw = ws.recv(timeout=120)
            if isinstance(raw, bytes):
                size = int.from_bytes(raw[:4], "big")
                header.validate(json.loads(raw[4:4 + size]))
                continue
            message = json.loads(raw)
            received.append(message)
            if message["type"] in ("result", "error", "cancelled"):
                finished.add(message["job"])
    for message in received:
        server_message.validate(message)
    kinds = {m["type"] for m in received}
    assert {"welcome", "models", "status", "accepted", "started", "progress", "result", "error"} <= kinds


def test_field_errors_give_hints_a_javascript_client_can_act_on(server):
    # JSON.stringify writes NaN and Infinity as null: "`guidance` must not be null" told a JavaScript developer
    # who never wrote null nothing; a camelCase name was only "unknown". Lengths are counted in code points,
    # not in JavaScript's UTF-16 units.
    with connect(server.url) as ws:
        ws.send(json.dumps({"type": "hello", "protocol": 1}))
        assert json.loads(ws.recv(timeout=30))["type"] == "welcome"
        ws.send('{"type": "submit", "job": "nan", "mode": "generate", "guidance": null}')
        error = json.loads(ws.recv(timeout=30))
        assert (error["code"], error["field"], error["job"]) == ("invalid_field", "guidance", "nan")
        assert "NaN" in error["message"] and "leave it out" in error["message"], error["message"]
        ws.send(json.dumps({"type": "submit", "job": "fox", "mode": "generate", "prompt": "🦊" * 10001}))
        error = json.loads(ws.recv(timeout=30))
        assert (error["code"], error["field"]) == ("invalid_field", "prompt")
        assert "10000 characters (Unicode code points)" in error["message"], error["message"]
        ws.send(json.dumps({"type": "submit", "job": "camel", "mode": "generate", "outputFormat": "webp"}))
        error = json.loads(ws.recv(timeout=30))  # JavaScript's naming: the error names the protocol's field
        assert (error["code"], error["field"]) == ("invalid_field", "outputFormat")
        assert "did you mean `output_format`?" in error["message"], error["message"]
        for name, ours in (("cfg_scale", "guidance"), ("imageGuidanceScale", "image_guidance"),
                           ("denoising_strength", "strength")):  # A1111's and diffusers' names, sent by habit
            ws.send(json.dumps({"type": "submit", "job": "habit", "mode": "generate", name: 5}))
            error = json.loads(ws.recv(timeout=30))
            assert (error["code"], error["field"]) == ("invalid_field", name)
            assert f"`{ours}` is its name here" in error["message"], error["message"]
        ws.send(json.dumps({"type": "submit", "job": "next", "mode": "generate", "prompt": "🦊" * 6000, "steps": 1,
                            "width": 64, "height": 64}))  # 12000 UTF-16 units: fine
        assert json.loads(ws.recv(timeout=30))["type"] == "accepted"


def test_a_data_url_sent_as_inline_data_is_refused_saying_what_to_send(server):
    # canvas.toDataURL() is how a web page gets a PNG's base64, prefix and all; the answer was only "not valid
    # base64". The next valid job still runs.
    data = base64.b64encode(png(picture(64, 64)).data).decode()
    with connect(server.url) as ws:
        ws.send(json.dumps({"type": "hello", "protocol": 1}))
        assert json.loads(ws.recv(timeout=30))["type"] == "welcome"
        job = {"type": "submit", "mode": "img2img", "strength": 0.5, "steps": 2, "seed": 1}
        for sent, said in (("data:image/png;base64," + data, "data: URL"),
                           (data.replace("+", "-").replace("/", "_"), "base64url"),
                           (data[:40] + "\n" + data[40:], "line breaks")):
            ws.send(json.dumps({**job, "job": "page", "image": {"data": sent}}))
            error = json.loads(ws.recv(timeout=30))
            assert (error["code"], error["field"], error["job"]) == ("bad_image", "image", "page")
            assert said in error["message"], error["message"]
        ws.send(json.dumps({**job, "job": "page", "image": {"data": data}}))
        assert json.loads(ws.recv(timeout=30))["type"] == "accepted"


def test_a_frame_whose_length_is_little_endian_is_refused_saying_so_and_the_next_upload_is_taken(server):
    # A JavaScript client writing the length with a Uint32Array (little-endian on every machine it runs on)
    # read only "header length 1056964608 is invalid".
    header = json.dumps({"image": "a", "role": "image", "format": "l8", "width": 2, "height": 2}).encode()
    with connect(server.url) as ws:
        ws.send(json.dumps({"type": "hello", "protocol": 1}))
        assert json.loads(ws.recv(timeout=30))["type"] == "welcome"
        ws.send(struct.pack("<I", len(header)) + header + bytes(4))
        error = json.loads(ws.recv(timeout=30))
        assert (error["code"], error["field"], error["job"]) == ("bad_image", None, None)
        assert f"read little-endian it would be {len(header)}: write it big-endian" in error["message"], error
        ws.send(struct.pack(">I", len(header)) + header + bytes(4))
        ws.send(json.dumps({"type": "submit", "job": "grey", "mode": "img2img", "image": {"frame": "a"},
                            "strength": 0.5, "steps": 2}))
        reply = json.loads(ws.recv(timeout=30))
        assert (reply["type"], reply["job"]) == ("accepted", "grey"), reply


def test_a_job_id_still_in_use_is_refused(server):
    with raw_session(server.url) as ws:
        submit = {"type": "submit", "job": "dup", "mode": "generate", "steps": 150, "width": 512, "height": 512}
        ws.send(json.dumps(submit))
        ws.send(json.dumps(submit))
        error = next_error(ws)
        assert (error["job"], error["code"], error["field"]) == ("dup", "duplicate_job", "job")
        ws.send(json.dumps({"type": "cancel", "job": "dup"}))
        while (message := json.loads(ws.recv())) and message["type"] != "cancelled":
            pass
        assert message["job"] == "dup"


def test_the_log_says_who_connected_and_how_each_job_ended_without_the_prompt(server, caplog):
    # the log said "connection open" and nothing about jobs: an admin could not tell who ran what, or how long
    import logging

    with caplog.at_level(logging.INFO), Client(server.url, name="probe-tool") as client:
        client.run("generate", job="logged", prompt="a secret sketch", steps=1, width=64, height=64, seed=0)
        with pytest.raises(EaselError):
            client.run("generate", job="refused-model", prompt="x", model="no-such-model", steps=1)
        deadline = time.monotonic() + 10
        while "job logged" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "probe-tool" in caplog.text and "connected from 127.0.0.1" in caplog.text
    assert any(record.getMessage().startswith("job logged (generate on demo) done in ") for record in caplog.records)
    assert "a secret sketch" not in caplog.text
