"""The server's session core driven with plain calls (no socket, no event loop), and the worker's threads.

A ``Session`` turns each incoming frame into a ``Reply``; these tests read the replies directly. The
last tests run a real server to show where pictures are encoded and in which order frames leave.
"""

import asyncio
import base64
import dataclasses
import json
import struct
import threading
import time
import zlib

import pytest
from PIL import Image
from websockets.sync.client import connect

from backend.server import worker
from backend.server.session import MAX_UPLOADS, ServerState, Session
from conftest import png
from schema_check import validator
from shared.images import encode_frame
from shared.messages import CLIENT_MESSAGES, PROTOCOL_VERSION

SERVER_MESSAGE = validator("server_message")
SUBMIT = {"type": "submit", "job": "j1", "mode": "generate", "prompt": "x", "steps": 2, "width": 64, "height": 64,
          "seed": 0}


def send(session: Session, message: dict):
    """The messages a session answers with; a job's intake runs right here, as the transport would."""
    reply = session.receive(json.dumps(message))
    if reply.intake is not None:
        assert reply.send == []
        reply.intake.build()
        reply = session.admit(reply.intake)
    for answer in reply.send:
        SERVER_MESSAGE.validate(answer)
    return reply.send


def only_error(messages: list) -> tuple:
    (message,) = messages
    assert message["type"] == "error", message
    return message["code"], message["field"], message["job"]


def upload(image_id: str, nbytes: int, role: str = "image") -> bytes:
    return encode_frame({"image": image_id, "role": role, "format": "rgba8", "width": nbytes // 4, "height": 1},
                        bytes(nbytes))


def state_with(config, engine, **changes) -> ServerState:
    limits = {key: changes.pop(key) for key in list(changes) if key.startswith("max_")}
    return ServerState(dataclasses.replace(config, limits=dataclasses.replace(config.limits, **limits), **changes),
                       engine)


@pytest.fixture
def state(demo_config, engine):
    return ServerState(demo_config, engine)  # its own queue: nothing here runs on the shared server


@pytest.fixture
def session(state):
    session = state.open()
    assert send(session, {"type": "hello", "protocol": PROTOCOL_VERSION})[0]["type"] == "welcome"
    return session


def test_the_handler_table_covers_every_client_message():
    assert set(Session.HANDLERS) == set(CLIENT_MESSAGES)
    assert all(callable(handler) for handler in Session.HANDLERS.values())


def test_hello_first_then_welcome(state, engine):
    session = state.open()
    assert only_error(send(session, {"type": "status"})) == ("hello_required", None, None)
    reply = session.receive(upload("early", 16))
    assert only_error(reply.send) == ("hello_required", None, None) and not reply.close
    (welcome,) = send(session, {"type": "hello", "protocol": PROTOCOL_VERSION, "client": "test"})
    assert (welcome["type"], welcome["protocol"], welcome["default_model"]) == ("welcome", PROTOCOL_VERSION, "demo")
    assert welcome["capabilities"]["preprocessors"] == engine.preprocessors.available()
    assert send(session, {"type": "status"})[0]["type"] == "status"


def test_json_sent_as_a_binary_frame_is_told_to_go_as_text(state):
    # A client whose library sends bytes as binary frames was told to say hello (it had) or about a 2 GB header.
    session = state.open()
    hello = json.dumps({"type": "hello", "protocol": PROTOCOL_VERSION}).encode()
    (error,) = session.receive(hello).send
    assert error["code"] == "hello_required" and "text frames" in error["message"]
    assert send(session, {"type": "hello", "protocol": PROTOCOL_VERSION})[0]["type"] == "welcome"
    (error,) = session.receive(json.dumps({"type": "status"}).encode()).send
    assert (error["code"], error["job"]) == ("bad_image", None) and "text frames" in error["message"]


def test_an_unsupported_protocol_is_refused_and_the_connection_stays(state):
    session = state.open()
    reply = session.receive(json.dumps({"type": "hello", "protocol": PROTOCOL_VERSION + 1}))
    assert only_error(reply.send) == ("unsupported_protocol", "protocol", None) and not reply.close
    assert not session.greeted
    assert send(session, {"type": "hello", "protocol": PROTOCOL_VERSION})[0]["type"] == "welcome"


def test_a_missing_or_wrong_token_closes_the_connection(demo_config, engine):
    state = state_with(demo_config, engine, token="s3cret")
    for token in ({}, {"token": "wrong"}, {"token": "s3cre"}, {"token": "s3cret!"}):
        session = state.open()
        reply = session.receive(json.dumps({"type": "hello", "protocol": PROTOCOL_VERSION, **token}))
        assert only_error(reply.send) == ("unauthorized", "token", None)
        assert reply.close and not session.greeted
    assert send(state.open(), {"type": "hello", "protocol": PROTOCOL_VERSION, "token": "s3cret"})[0]["type"] == \
        "welcome"


def test_uploads_are_held_within_the_connection_budget(demo_config, engine):
    session = state_with(demo_config, engine, max_upload_bytes=100).open()
    send(session, {"type": "hello", "protocol": PROTOCOL_VERSION})
    assert session.receive(upload("a", 48)).send == []
    assert session.receive(upload("b", 48, role="mask")).send == []
    (error,) = session.receive(upload("c", 48, role="control")).send
    assert (error["code"], error["field"]) == ("limit_exceeded", "control")
    assert "past 100 bytes (96 held)" in error["message"], "which limit, and how far off"
    assert session.receive(upload("a", 48)).send == [], "the same id again replaces the earlier upload"
    assert only_error(session.receive(upload("r", 4, role="result")).send) == ("invalid_field", "role", None)
    assert sorted(session.uploads) == ["a", "b"]
    session.close()
    assert session.uploads == {}


def test_a_connection_is_told_how_many_unused_uploads_it_may_hold(session):
    for index in range(MAX_UPLOADS):
        assert session.receive(upload(f"u{index}", 4)).send == []
    (error,) = session.receive(upload("one-more", 4)).send
    assert error["code"] == "limit_exceeded" and f"holds {MAX_UPLOADS} unused uploads" in error["message"]


def test_an_oversize_frame_is_refused_and_the_connection_stays(demo_config, engine):
    session = state_with(demo_config, engine, max_message_bytes=64).open()
    send(session, {"type": "hello", "protocol": PROTOCOL_VERSION})
    reply = session.receive(upload("big", 80))
    assert only_error(reply.send) == ("frame_too_large", None, None) and not reply.close


def test_a_job_id_in_use_is_refused_until_the_job_ends(session, state):
    assert send(session, SUBMIT) == [{"type": "accepted", "job": "j1", "position": 0}]
    assert only_error(send(session, SUBMIT)) == ("duplicate_job", "job", "j1")
    assert len(state.queue) == 1, "the refused duplicate was not queued"
    other = state.open()
    send(other, {"type": "hello", "protocol": PROTOCOL_VERSION})
    assert send(other, SUBMIT) == [{"type": "accepted", "job": "j1", "position": 1}], "ids belong to a connection"
    assert send(session, {"type": "cancel", "job": "j1"}) == [{"type": "cancelled", "job": "j1", "while": "queued"}]
    assert [job.owner for job in state.queue.owned_by(other)] == [other], "the other connection's j1 stays"
    assert send(session, SUBMIT)[0]["type"] == "accepted", "an id is free again once its job ended"


def test_clients_take_turns_so_a_long_queue_does_not_hold_up_another_client(session, state):
    def greeted():
        other = state.open()
        send(other, {"type": "hello", "protocol": PROTOCOL_VERSION})
        return other

    def positions(client, *ids):
        return [send(client, {**SUBMIT, "job": job})[0]["position"] for job in ids]

    def run_next():  # as the worker does: the running job ends, the next starts
        if state.queue.running:
            state.queue.done(state.queue.running)
        return asyncio.run(state.queue.next()).id

    krita, script = greeted(), session
    assert positions(script, "s1", "s2", "s3") == [0, 1, 2]
    assert positions(krita, "k1") == [1], "the second client's first job comes after one job, not three"
    assert send(script, {"type": "status"})[0]["queued"] == ["s1", "s2", "s3"], "a client's jobs keep their order"
    assert run_next() == "s1"
    assert positions(script, "s4") == [4], "behind s1 (running), k1, s2, s3"
    assert [run_next(), run_next()] == ["k1", "s2"]
    # A painter who waits for each result before sending the next job gets every other turn.
    assert positions(krita, "k2") == [1]
    assert [run_next(), run_next(), run_next()] == ["k2", "s3", "s4"]


def test_accepted_position_holds_for_a_connection_not_served_and_can_grow_for_others(session, state):
    # docs/protocol.md §1 Queue said only a connection's second and later queued jobs could be passed: its
    # first one is passed too while its previous job runs
    def greeted():
        other = state.open()
        send(other, {"type": "hello", "protocol": PROTOCOL_VERSION})
        return other

    script, painter, page = session, greeted(), greeted()
    send(script, {**SUBMIT, "job": "s0"})
    asyncio.run(state.queue.next())  # s0 runs
    (queued,) = send(script, {**SUBMIT, "job": "s1"})
    (first,) = send(painter, {**SUBMIT, "job": "p1"})
    assert (queued["position"], first["position"]) == (1, 1)
    send(page, {**SUBMIT, "job": "w1"})  # later, from a new connection: behind p1, ahead of s1
    assert [job.id for job in state.queue.waiting()] == ["p1", "w1", "s1"]
    # status says where each queued job stands now (the script had no way to learn s1 was passed)
    (now,) = send(script, {"type": "status"})
    assert (now["running"], now["queued"], now["ahead"]) == ("s0", ["s1"], [3])
    assert send(painter, {"type": "status"})[0]["ahead"] == [1]


def test_jobs_whose_pictures_were_decoded_at_once_on_several_connections_stay_within_max_queued(demo_config, engine):
    # Each connection decodes its pictures on its own thread: two submits that both passed the check before
    # either was queued made a queue of max_queued + 1 (one more per connection sending at that moment).
    state = state_with(demo_config, engine, max_queued=1)
    one, other = state.open(), state.open()
    for session in (one, other):
        send(session, {"type": "hello", "protocol": PROTOCOL_VERSION})
    intakes = [session.receive(json.dumps({**SUBMIT, "job": job})).intake
               for session, job in ((one, "a"), (other, "b"))]
    for intake in intakes:
        intake.build()
    assert one.admit(intakes[0]).send[0]["type"] == "accepted"
    (refusal,) = other.admit(intakes[1]).send
    assert (refusal["code"], refusal["job"], refusal["ends_job"]) == ("limit_exceeded", "b", True)
    assert "queue is full" in refusal["message"] and len(state.queue) == 1


PICTURE = {"data": png(Image.new("RGB", (64, 64), (90, 140, 30))).to_base64()}


def test_a_vanishing_strength_is_refused_at_once(session):
    # The advice "use at least N steps" counted N up from the job's steps: at strength 1e-300 for ever, on the
    # thread the connection waits on (no answer again, and a core busy until the server stopped).
    answers = []
    thread = threading.Thread(target=lambda: answers.extend(send(session, {
        "type": "submit", "job": "tiny", "mode": "img2img", "image": PICTURE, "steps": 20, "strength": 1e-300})),
        daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "no answer: the intake is still counting"
    (error,) = answers
    assert (error["code"], error["field"]) == ("too_few_steps", "strength")
    assert error["message"].endswith("raise the strength"), "not a count of 10^300 steps"
    assert send(session, {"type": "status"})[0]["type"] == "status"


def test_a_few_step_job_whose_schedule_would_pass_max_steps_is_refused(session, state):
    # A few-step preset runs one step at any strength above 0, on a schedule of steps / strength: 1e-12 was
    # accepted and then built a schedule of 10^12 steps on the GPU worker, every client's jobs waiting behind it.
    # The LCM and TCD samplers draw at most 50 steps: 0.007 (a schedule of 143) failed in the scheduler, `internal`.
    for preset, least, most in (("lightning", "0.007", "max_steps"), ("lcm", "0.02", "50 its lcm sampler")):
        job = {"type": "submit", "job": preset, "mode": "img2img", "image": PICTURE, "preset": preset,
               "strength": 1e-12}
        (error,) = send(session, job)
        assert (error["code"], error["field"], error["job"]) == ("limit_exceeded", "strength", preset)
        assert f"at least {least}" in error["message"] and most in error["message"], error["message"]
        assert send(session, {**job, "strength": float(least)})[0]["type"] == "accepted", "the strength it names runs"


@pytest.mark.parametrize("sampler", ["lcm", "tcd"])
def test_more_steps_than_a_few_step_sampler_draws_are_refused_before_accepted(session, sampler):
    # 60 steps of the lcm sampler were accepted and then failed in diffusers' scheduler as an `internal` error.
    (error,) = send(session, {**SUBMIT, "sampler": sampler, "steps": 51})
    assert (error["code"], error["field"]) == ("invalid_field", "steps") and "at most 50" in error["message"]
    assert send(session, {**SUBMIT, "sampler": sampler, "steps": 50})[0]["type"] == "accepted"


def test_a_png_bomb_is_told_this_servers_limits(session, state):
    # Past Pillow's own bomb limit the error quoted Pillow: "exceeds limit of 178956970 pixels, could be
    # decompression bomb DOS attack", a limit this server does not have.
    data = bytearray(png(Image.new("L", (1, 1))).data)
    data[16:24] = struct.pack(">II", 100_000, 100_000)  # the IHDR's size, and its CRC
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    (error,) = send(session, {"type": "submit", "job": "bomb", "mode": "img2img",
                              "image": {"data": base64.b64encode(bytes(data)).decode()}})
    assert (error["code"], error["field"]) == ("limit_exceeded", "image")
    limits = state.config.limits
    assert "100000x100000" in error["message"] and f"at most {limits.max_side} pixels a side" in error["message"]
    assert "178956970" not in error["message"]


def test_a_batch_over_the_limit_is_said_to_be_one(session):
    # The seed range rule came first and asked for a seed of at most -10**30.
    (error,) = send(session, {**SUBMIT, "batch": 10**30})
    assert (error["code"], error["field"]) == ("limit_exceeded", "batch")


def test_a_refused_request_reusing_a_live_id_does_not_end_that_job(session, state):
    # Field errors are checked before `duplicate_job`: their error names the live job, and a client that
    # ends jobs by `ends_job` must not give that job up.
    send(session, SUBMIT)
    for message in ({**SUBMIT, "steps": 0}, {"type": "preprocess", "job": "j1", "preprocessor": "canny"},
                    {"type": "sumbit", "job": "j1"}, {"job": "j1"}):
        (error,) = send(session, message)
        assert (error["job"], error["ends_job"]) == ("j1", False), (message, error)
    (error,) = send(session, {"type": "status", "job": "j1"})
    assert (error["field"], error["job"], error["ends_job"]) == ("job", None, False), "a status names no job"
    assert [job.id for job in state.queue.owned_by(session)] == ["j1"]
    send(session, {"type": "cancel", "job": "j1"})
    (error,) = send(session, {**SUBMIT, "steps": 0})
    assert (error["job"], error["ends_job"]) == ("j1", True), "once j1 ended, a refused submit is that id's ending"


def test_cancelling_an_unknown_job_is_an_error(session, state):
    assert only_error(send(session, {"type": "cancel", "job": "nope"})) == ("unknown_job", "job", "nope")
    other = state.open()
    send(other, {"type": "hello", "protocol": PROTOCOL_VERSION})
    send(other, SUBMIT)
    assert only_error(send(session, {"type": "cancel", "job": "j1"})) == ("unknown_job", "job", "j1"), \
        "a job can only be cancelled by its own connection"


def test_a_refused_intake_names_the_job_and_queues_nothing(session, state):
    submit = {**SUBMIT, "job": "bad", "mode": "img2img", "image": {"frame": "never-sent"}}
    del submit["width"], submit["height"]
    assert only_error(send(session, submit)) == ("unknown_image", "image", "bad")
    assert len(state.queue) == 0
    assert only_error(send(session, {**SUBMIT, "steps": 100000})) == ("limit_exceeded", "steps", "j1")


def test_a_job_whose_pictures_were_decoded_while_the_server_began_to_stop_is_refused(session, state):
    # SIGTERM between a submit's field checks and the end of its (slow) picture decoding: the shutdown has
    # cancelled the queue by then, so the job must be refused, not accepted and left without an ending.
    reply = session.receive(json.dumps({**SUBMIT, "job": "late"}))
    state.closing = True
    reply.intake.build()
    assert only_error(session.admit(reply.intake).send) == ("shutting_down", None, "late")
    assert len(state.queue) == 0 and state.queue.running is None


def test_a_preprocess_refused_for_its_preprocessor_leaves_its_upload(session):
    # The documented order (unknown_preprocessor, then the image looked up): the upload was consumed first.
    session.receive(encode_frame({"image": "pic", "role": "image", "format": "rgba8", "width": 64, "height": 64},
                                 bytes(64 * 64 * 4)))
    refused = {"type": "preprocess", "job": "p1", "preprocessor": "tile", "image": {"frame": "never-sent"}}
    assert only_error(send(session, refused)) == ("unknown_preprocessor", "preprocessor", "p1")
    assert only_error(send(session, {**refused, "image": {"frame": "pic"}})) == \
        ("unknown_preprocessor", "preprocessor", "p1")
    (accepted,) = send(session, {**refused, "preprocessor": "canny", "image": {"frame": "pic"}})
    assert accepted["type"] == "accepted", "the upload is still there"


def test_a_resume_that_cannot_be_says_why_not_an_expiry_that_did_not_happen(state):
    # Both got "it expired (after 120s) or the server restarted": a client that had closed its session with
    # close() a second earlier, or that sent its own session's id again, went looking for a clock problem.
    closed = state.open()
    (welcome,) = send(closed, {"type": "hello", "protocol": PROTOCOL_VERSION})
    closed.close()  # what a close frame with code 1000, or without a code, does
    error = send(state.open(), {"type": "hello", "protocol": PROTOCOL_VERSION, "resume": welcome["session"]})[0]
    assert (error["code"], error["field"]) == ("unknown_session", "resume")
    assert "its client closed it" in error["message"], error["message"]
    session = state.open()
    (welcome,) = send(session, {"type": "hello", "protocol": PROTOCOL_VERSION})
    error = send(session, {"type": "hello", "protocol": PROTOCOL_VERSION, "resume": welcome["session"]})[0]
    assert (error["code"], error["field"]) == ("unknown_session", "resume")
    assert "this connection already holds that session" in error["message"], error["message"]
    assert send(session, {"type": "status"})[0]["type"] == "status", "the connection goes on with its session"


def test_a_job_without_an_id_gets_one(session):
    submit = dict(SUBMIT)
    del submit["job"]
    (accepted,) = send(session, submit)
    assert accepted["type"] == "accepted" and len(accepted["job"]) == 16


def test_status_lists_this_connections_jobs_and_close_drops_them(session, state):
    send(session, SUBMIT)
    send(session, {**SUBMIT, "job": "j2"})
    (status,) = send(session, {"type": "status"})
    assert (status["running"], status["queued"], status["ahead"], status["queue_length"], status["clients"]) == \
        (None, ["j1", "j2"], [0, 1], 2, 1)
    session.close()
    assert len(state.queue) == 0 and state.sessions == set()


def test_models_are_described_by_the_engine_and_worded_by_the_server(session, engine):
    (models,) = send(session, {"type": "models"})
    described = engine.registry.describe()
    assert models["default"] == "demo"
    def worded(d):  # (a flux model has no prediction type: the message leaves both fields out)
        out = dict(dataclasses.asdict(d), capabilities=d.capabilities.to_wire())
        return {key: value for key, value in out.items() if value is not None or key not in
                ("prediction_type", "zero_terminal_snr")}

    assert models["models"] == [worded(d) for d in described]
    assert [entry["name"] for entry in models["models"]] == engine.registry.names()


def test_a_failing_handler_costs_one_answer(session, monkeypatch):
    def broken(self, message):
        raise RuntimeError("boom")

    monkeypatch.setitem(Session.HANDLERS, "status", broken)
    assert only_error(send(session, {"type": "status"})) == ("internal", None, None)
    assert send(session, {"type": "models"})[0]["type"] == "models"


# -- the worker: where pictures are encoded, and in which order they leave ---------------------

def collect(ws, job: str) -> list:
    """(kind, detail) for every frame of ``job`` until it ends: ("frame", header) or ("message", message)."""
    seen = []
    while True:
        raw = ws.recv(timeout=120)
        if isinstance(raw, bytes):
            size = int.from_bytes(raw[:4], "big")
            seen.append(("frame", json.loads(raw[4:4 + size])))
            continue
        message = json.loads(raw)
        seen.append(("message", message))
        if message["type"] in ("result", "error", "cancelled") and message.get("job") == job:
            return seen


def hello(url: str):
    ws = connect(url)
    ws.send(json.dumps({"type": "hello", "protocol": PROTOCOL_VERSION}))
    assert json.loads(ws.recv())["type"] == "welcome"
    return ws


def test_previews_are_encoded_off_the_gpu_thread_and_arrive_in_order(server, monkeypatch):
    threads, real = [], worker.encode

    def slow_encode(pixels, fmt):
        threads.append(threading.current_thread().name)
        time.sleep(0.03)  # slower than a demo step: the GPU thread runs ahead, the order must hold anyway
        return real(pixels, fmt)

    monkeypatch.setattr(worker, "encode", slow_encode)
    with hello(server.url) as ws:
        ws.send(json.dumps({**SUBMIT, "job": "order", "steps": 6, "batch": 2, "preview_every": 1,
                            "preview_size": 32}))
        seen = collect(ws, "order")
    assert threads and all(name.startswith("easel-encode") for name in threads), set(threads)
    assert len(threads) == 12 + 2, "twelve previews and two results, all on the encoder thread"
    kinds = [detail["type"] if kind == "message" else detail["role"] for kind, detail in seen]
    assert kinds == ["accepted", "started"] + ["preview", "progress"] * 12 + ["result", "result", "result"]
    for (_, frame), (_, message) in zip(seen[2:-3:2], seen[3:-3:2]):
        assert message["preview"] == frame["image"] and frame["step"] == message["step"]
    assert [message["step"] for kind, message in seen[3:-3:2]] == list(range(1, 13))


def test_a_cancelled_job_ends_after_its_last_progress(server, monkeypatch):
    """The encoder is held while the engine runs ahead and is cancelled: `cancelled` still comes last."""
    first, release, real = threading.Event(), threading.Event(), worker.encode

    def held_encode(pixels, fmt):
        first.set()
        release.wait(30)
        return real(pixels, fmt)

    monkeypatch.setattr(worker, "encode", held_encode)
    with hello(server.url) as ws:
        ws.send(json.dumps({**SUBMIT, "job": "held", "steps": 150, "width": 256, "height": 256,
                            "preview_every": 1, "preview_size": 32}))
        assert first.wait(60)
        ws.send(json.dumps({"type": "cancel", "job": "held"}))
        deadline = time.perf_counter() + 30
        while not (server.server.queue.running and server.server.queue.running.cancel_event.is_set()):
            assert time.perf_counter() < deadline
            time.sleep(0.01)
        time.sleep(0.5)  # the GPU thread stops at its next step while the encoder is still held
        release.set()
        seen = collect(ws, "held")
        ws.send(json.dumps({**SUBMIT, "job": "after"}))  # its messages pass the same encoder thread, after
        later = collect(ws, "after")
    assert seen[-1] == ("message", {"type": "cancelled", "job": "held", "while": "running"})
    assert [detail for kind, detail in later if detail.get("job") == "held"] == [], "nothing after the end"
    steps = [detail["step"] for kind, detail in seen if kind == "message" and detail["type"] == "progress"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 150
