"""Message validation, image frames and the documented JSON Schema."""

import base64
import json
import re
from pathlib import Path

import jsonschema
import pytest

from shared.errors import MAX_ECHO, shown
from shared.images import ImageData, decode_frame, encode_frame
from shared.messages import ProtocolError, json_schema, parse_client_message

SCHEMA_FILE = Path(__file__).parent.parent / "docs" / "protocol.schema.json"


def error_of(text):
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(text)
    return caught.value


def test_submit_gets_defaults():
    message = parse_client_message(json.dumps({"type": "submit", "mode": "generate", "prompt": "a cat"}))
    assert message["steps"] == 20 and message["strength"] == 1.0 and message["batch"] == 1
    assert message["sampler"] == "dpmpp_2m_karras"


@pytest.mark.parametrize("text, code, field", [
    ("not json", "bad_json", None),
    ("[1, 2]", "bad_json", None),
    ('{"type": "paint"}', "unknown_type", "type"),
    ('{"mode": "generate"}', "invalid_field", "type"),
    ('{"type": "submit"}', "invalid_field", "mode"),
    ('{"type": "submit", "mode": "generate", "steps": "20"}', "invalid_field", "steps"),
    ('{"type": "submit", "mode": "generate", "steps": true}', "invalid_field", "steps"),
    ('{"type": "submit", "mode": "img2img", "strength": 1.5}', "invalid_field", "strength"),
    ('{"type": "submit", "mode": "img2img", "strength": -0.1}', "invalid_field", "strength"),
    ('{"type": "submit", "mode": "generate", "colour": 1}', "invalid_field", "colour"),
    ('{"type": "submit", "mode": "inpaint", "image": {"frame": "a b"}}', "invalid_field", "image.frame"),
    ('{"type": "cancel"}', "invalid_field", "job"),
])
def test_bad_messages_name_the_problem(text, code, field):
    error = error_of(text)
    assert (error.code, error.field) == (code, field)
    assert error.message and " a integer" not in error.message


@pytest.mark.parametrize("text, said", [
    ("[object Object]", "`JSON.stringify(message)`"),  # ws.send(message) without JSON.stringify, in a browser
    ("[object ImageData]", "`imageData.data`"),  # ws.send(ctx.getImageData(...)) instead of a frame of its bytes
    ("undefined", "`JSON.stringify(message)`"),
    ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==", "upload a picture as a binary frame"),  # canvas.toDataURL()
    ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB", "or put its base64 in a submit's `image.data`"),
])
def test_a_javascript_value_or_a_picture_sent_as_text_is_named(text, said):
    # A browser's WebSocket.send sends String(value) for an object: the server answered "Expecting value: line 1
    # column 2 (char 1)", which says nothing of the mistake.
    error = error_of(text)
    assert error.code == "bad_json" and said in error.message, error.message
    assert error_of("{'type': 'hello'}").message.endswith("Expecting property name enclosed in double quotes: line 1 "
                                                         "column 2 (char 1)"), "other mistakes keep the parser's words"


def test_a_frame_without_its_payload_is_said_to_be_empty():
    for fmt in ("png", "webp"):
        with pytest.raises(ProtocolError) as caught:
            decode_frame(encode_frame({"image": "a", "role": "image", "format": fmt, "width": 2, "height": 1}, b""))
        assert caught.value.message == f"bytes are not a {fmt.upper()} file (it is empty: 0 bytes)"


def test_a_webui_users_random_seed_is_told_how_to_ask_for_one():
    error = error_of('{"type": "submit", "mode": "generate", "seed": -1}')
    assert error.field == "seed" and "leave it out or send null" in error.message


def test_frames_round_trip_and_reject_lies():
    raw = ImageData("rgba8", 2, 1, bytes(range(8)))
    header, image = decode_frame(encode_frame({"image": "a", "role": "image", "format": "rgba8",
                                               "width": 2, "height": 1}, raw.data))
    assert header["image"] == "a" and image.data == raw.data
    with pytest.raises(ProtocolError) as caught:
        decode_frame(encode_frame({"image": "a", "role": "image", "format": "rgba8", "width": 3, "height": 1},
                                  raw.data))
    assert (caught.value.code, caught.value.field) == ("bad_image", "image")
    with pytest.raises(ProtocolError) as caught:  # the error names the frame's role (it named none)
        decode_frame(encode_frame({"image": "b", "role": "mask", "format": "png", "width": 2, "height": 1},
                                  b"\xff\xd8\xff\xe0" + bytes(60)))
    assert (caught.value.code, caught.value.field) == ("bad_image", "mask") and "JPEG" in caught.value.message
    with pytest.raises(ProtocolError):
        decode_frame(b"\x00\x00\x10\x00{}")


def test_a_picture_of_another_format_is_named_in_the_error():
    # A tool that inlined its JPEG as it was read "bytes are not a PNG file" and nothing more.
    jpeg = b"\xff\xd8\xff\xe0" + bytes(60)
    for make, said in ((lambda: ImageData.from_base64(base64.b64encode(jpeg).decode()), "it is a JPEG file"),
                       (lambda: ImageData("webp", 1, 1, b"\x89PNG\r\n\x1a\n" + bytes(30)).check(),
                        "it is a PNG file: say so in `format`")):
        with pytest.raises(ProtocolError) as caught:
            make()
        assert caught.value.code == "bad_image" and said in caught.value.message, caught.value.message


def test_schema_is_valid_and_matches_the_documented_file():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert json.loads(SCHEMA_FILE.read_text()) == schema, "regenerate with: easel schema > docs/protocol.schema.json"


def test_the_documented_transcripts_are_valid_traffic():
    """Every whole message of docs/protocol.md's transcripts holds to the schema (lines cut with `…` aside),
    so a transcript cannot keep a field or a value the server no longer sends."""
    from schema_check import validator

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    checked = 0
    for direction, text in re.findall(r"^(C>S|S>C) (?:\[binary\] header )?(\{.*?\})(?: \+ \d+ bytes)?$", doc, re.M):
        try:
            message = json.loads(text)
        except ValueError:
            continue  # a line cut with `…`
        kind = "frame_header" if "type" not in message else f"{'client' if direction == 'C>S' else 'server'}_message"
        errors = list(validator(kind).iter_errors(message))
        assert not errors, f"{text[:120]}: {errors[0].message}"
        checked += 1
    assert checked >= 40


def test_a_long_value_in_an_error_is_cut_and_still_reads_as_a_string():
    cut = shown("lora-" * 100)
    assert len(cut) == MAX_ECHO and cut.startswith("'lora-") and cut.endswith("…'")
    assert shown(10**100).endswith("…") and len(shown(10**100)) == MAX_ECHO
    assert shown("short") == "'short'"


def test_a1111_api_names_are_answered_with_the_protocols():
    # A tool ported from A1111's API (and its ControlNet units) got only "unknown field `control[0].weight`".
    from shared.job import Job

    for message, field, said in (
            ({"control": [{"type": "canny", "weight": 0.5}]}, "control[0].weight", "`control[0].scale`"),
            ({"control": [{"type": "canny", "guidance_end": 0.5}]}, "control[0].guidance_end", "`control[0].end`"),
            ({"denoising_strength": 0.5}, "denoising_strength", "`strength`")):
        with pytest.raises(ProtocolError) as caught:
            Job.from_message({"type": "submit", "mode": "img2img", **message})
        assert caught.value.field == field and f"{said} is its name here" in caught.value.message, caught.value.message
