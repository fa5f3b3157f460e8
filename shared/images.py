"""Image transport: binary frames (a small JSON header, then the bytes) and inline base64.

Frame layout: 4-byte big-endian header length N, N bytes of UTF-8 JSON header, then the image
bytes. The header names the image id, its job, role, format, width and height. Raw formats
(``rgba8``, ``l8``) are plain rows of pixels, top to bottom, so a host can send its own buffer
without encoding it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import struct
from dataclasses import dataclass

from .messages import FRAME_HEADER_FIELDS, ProtocolError, check_fields

CHANNELS = {"rgba8": 4, "l8": 1}
_SIGNATURES = {"png": b"\x89PNG\r\n\x1a\n", "webp": b"RIFF"}
MAX_HEADER_BYTES = 4096
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> Pillow's Image.Transpose value that turns the stored pixels upright
_EXIF_TURNS = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}


@dataclass
class ImageData:
    """An image as it travels: encoded (png / webp) or raw (rgba8 / l8) bytes plus its size."""

    format: str
    width: int
    height: int
    data: bytes

    def __repr__(self) -> str:
        # the bytes themselves flooded a notebook or REPL that showed a result, a preview or a control map
        return (f"ImageData(format={self.format!r}, width={self.width}, height={self.height}, "
                f"data=<{len(self.data)} bytes>)")

    def check(self) -> "ImageData":
        """Raise ``bad_image`` if the bytes cannot be what the header says."""
        if self.format not in CHANNELS and self.format not in _SIGNATURES:
            raise ProtocolError("invalid_field", f"`format` must be one of {', '.join([*_SIGNATURES, *CHANNELS])}; "
                                f"got {self.format!r}", "format")
        if self.format in CHANNELS:
            expected = self.width * self.height * CHANNELS[self.format]
            if len(self.data) != expected:
                raise ProtocolError("bad_image", f"{self.format} image of {self.width}x{self.height} needs "
                                    f"{expected} bytes, got {len(self.data)}")
        elif not self.data.startswith(_SIGNATURES[self.format]) or (
                self.format == "webp" and self.data[8:12] != b"WEBP"):
            raise ProtocolError("bad_image", f"bytes are not a {self.format.upper()} file{_other_format(self.data)}")
        return self

    @classmethod
    def from_png(cls, data: bytes) -> "ImageData":
        """A PNG file's bytes, its size read from the header."""
        return cls("png", *png_size(data), data)

    @classmethod
    def from_base64(cls, data: str, fmt: str = "png") -> "ImageData":
        """Decode inline base64 (the size of a WebP is left 0: only the server needs it, after decoding)."""
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("bad_image", f"inline image is not valid base64{_base64_hint(data)}") from None
        return cls.from_png(raw) if fmt == "png" else cls(fmt, 0, 0, raw).check()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ImageData":
        """A PNG file on disk (other formats: open them with Pillow and use ``from_pil``)."""
        with open(path, "rb") as file:
            data = file.read()
        if not data:
            raise ProtocolError("bad_image", f"{os.fspath(path)} is empty (0 bytes)")
        if not data.startswith(_SIGNATURES["png"]):  # a photo's JPEG: the fix is a call here, not a converter
            kind = next((name for signature, name in _OTHER_SIGNATURES if data.startswith(signature)), "")
            kind = f" (it is a {kind} file)" if kind else ""
            raise ProtocolError("bad_image", f"{os.fspath(path)} is not a PNG file{kind}: open it with Pillow and use "
                                "ImageData.from_pil(Image.open(path))")
        return cls.from_png(data)

    @classmethod
    def from_pil(cls, picture) -> "ImageData":
        """A Pillow image, encoded as PNG (Pillow is the caller's: nothing here imports it), turned upright by
        its EXIF orientation as viewers show it: a phone photo opened with ``Image.open`` is stored sideways
        (and a mask or control map drawn over it would not fit)."""
        orientation = picture.getexif().get(EXIF_ORIENTATION, 1) if hasattr(picture, "getexif") else 1
        if orientation in _EXIF_TURNS:  # (Pillow's Transpose values, as ImageOps.exif_transpose turns them)
            picture = picture.transpose(_EXIF_TURNS[orientation])
        if picture.mode == "I":  # 32-bit grey (a TIFF mask), which Pillow cannot write as PNG: 8 or 16 bits, as
            # the server reads such a picture (values up to 255 are 8-bit ones, larger ones 16-bit)
            picture = picture.convert("L" if picture.getextrema()[1] <= 255 else "I;16")
        if picture.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):  # CMYK, YCbCr ... PNG has not
            picture = picture.convert("RGBA")
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return cls.from_png(buffer.getvalue())

    @classmethod
    def from_array(cls, array) -> "ImageData":
        """A numpy array of 8-bit pixels, rows top to bottom: height x width (grey), height x width x 3
        (RGB) or x 4 (RGBA). Sent raw (``l8`` / ``rgba8``): nothing is encoded."""
        shape, dtype = getattr(array, "shape", None), str(getattr(array, "dtype", ""))
        if shape is None or dtype != "uint8" or len(shape) not in (2, 3) or \
                (len(shape) == 3 and shape[2] not in (3, 4)):
            hint = " (scale floats to 0-255 and use .astype('uint8'))" if dtype.startswith("float") else ""
            raise TypeError(f"from_array takes a uint8 array of height x width, or height x width x 3 or 4 channels, "
                            f"not {type(array).__name__} of shape {shape} and dtype {dtype or '?'}{hint}")
        if len(shape) == 2:
            return cls("l8", shape[1], shape[0], array.tobytes())
        if shape[2] == 3:
            import numpy  # the caller's: an array of its own came in

            array = numpy.dstack([array, numpy.full(shape[:2], 255, numpy.uint8)])
        return cls("rgba8", shape[1], shape[0], array.tobytes())

    def to_pil(self):
        """The picture as a Pillow image (RGBA for ``rgba8``, L for ``l8``, else in the file's own mode); needs
        Pillow installed."""
        from PIL import Image  # optional: the client itself runs without Pillow

        if self.format in CHANNELS:
            return Image.frombytes("RGBA" if self.format == "rgba8" else "L", (self.width, self.height), self.data)
        picture = Image.open(io.BytesIO(self.data))
        picture.load()
        return picture

    def to_array(self):
        """The pixels as a numpy array (height x width x 4 for RGBA, height x width for grey); needs numpy,
        and Pillow for PNG and WebP."""
        import numpy  # optional, as Pillow above

        if self.format in CHANNELS:
            shape = (self.height, self.width, 4) if self.format == "rgba8" else (self.height, self.width)
            return numpy.frombuffer(self.data, numpy.uint8).reshape(shape)
        return numpy.asarray(self.to_pil())

    def to_base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


DEEP_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
"""Pillow's grey modes of more than 8 bits: 16-bit, 32-bit integer and 32-bit float."""


def eight_bit_grey(picture):
    """A Pillow picture of a ``DEEP_GREY`` mode as 8-bit grey (L), the rest as it is. Pillow's own
    conversion clips: a 16-bit depth map came out white, a float one black. 16-bit values are rounded,
    v / 257 (an ``I`` picture whose values all fit 0..255 is taken as 8-bit levels, one with values past
    16 bits, a 32-bit one, is scaled by its largest); floats that all lie within 0..1, as painting and HDR
    programs write them, are scaled by 255, other floats taken as 0..255 levels. Needs numpy."""
    if picture.mode not in DEEP_GREY:
        return picture
    import numpy  # the caller's, as its Pillow picture
    from PIL import Image

    values = numpy.asarray(picture, dtype=numpy.float64)
    if picture.mode == "F":
        values = numpy.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
    elif picture.mode == "I" and values.size and values.max() > 65535:  # (v / 257 left it all white)
        values = values * (255.0 / values.max())
    elif picture.mode != "I" or (values.size and values.max() > 255):
        values = values / 257.0
    return Image.fromarray(numpy.clip(numpy.rint(values), 0, 255).astype(numpy.uint8), "L")


def _base64_hint(data: str) -> str:
    """What is wrong with base64 that does not decode, where a client library is known to make it so."""
    if data[:5].lower() == "data:":  # a browser's canvas.toDataURL() / FileReader.readAsDataURL()
        return ": it is a data: URL; send only the base64 after its comma (`data:image/png;base64,` goes)"
    if "-" in data or "_" in data:
        return ": it is base64url (`-` and `_`); send standard base64 (`+` and `/`, padded with `=`)"
    if re.search(r"\s", data):  # (a scan in C: the string may be hundreds of megabytes)
        return ": it holds line breaks or spaces; send it on one line"
    return ""


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, without decoding it."""
    if len(data) < 24 or not data.startswith(_SIGNATURES["png"]) or data[12:16] != b"IHDR":
        raise ProtocolError("bad_image", f"bytes are not a PNG file{_other_format(data)}")
    return struct.unpack(">II", data[16:24])


# Files a client may have sent as they were (a photo, a scan): said by name, with what to send instead.
_OTHER_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
                     (b"MM\x00*", "TIFF"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"RIFF", "WebP"))


def _other_format(data: bytes) -> str:
    """``" (it is a JPEG file; ...)"`` when ``data`` is a picture file of a format that was not declared."""
    if not data:  # a frame whose payload was left out (or an empty `data`): "not a PNG file" sent them looking at bytes
        return " (it is empty: 0 bytes)"
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature) and not (name == "WebP" and data[8:12] != b"WEBP"):
            if name in ("PNG", "WebP"):
                return f" (it is a {name} file: say so in `format`)"
            return f" (it is a {name} file: convert it to PNG or WebP first, or send raw rgba8 / l8 frames)"
    return ""


def encode_frame(header: dict, payload: bytes) -> bytes:
    """Pack a header and image bytes into one binary websocket message."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(head)) + head + payload


def decode_frame(frame: bytes) -> tuple[dict, ImageData]:
    """Unpack and validate a binary message; raise ProtocolError when it is malformed."""
    if len(frame) < 4:
        raise ProtocolError("bad_image", "binary frame is shorter than its length prefix")
    (size,) = struct.unpack(">I", frame[:4])
    if size > MAX_HEADER_BYTES or 4 + size > len(frame):
        (swapped,) = struct.unpack("<I", frame[:4])
        hint = f"; read little-endian it would be {swapped}: write it big-endian" \
            if swapped <= MAX_HEADER_BYTES and 4 + swapped <= len(frame) and frame[4:5] == b"{" else ""
        raise ProtocolError("bad_image", f"binary frame header length {size} is invalid: the first 4 bytes are the "
                            f"header's length, unsigned 32-bit big-endian, at most {MAX_HEADER_BYTES} and within "
                            f"the frame's {len(frame)} bytes{hint}")
    try:
        header = json.loads(frame[4:4 + size])
    except RecursionError:  # 4096 bytes of `[` nest deeper than the parser's stack allows
        raise ProtocolError("bad_image", "binary frame header is nested too deep to be a frame header") from None
    except ValueError:
        raise ProtocolError("bad_image", "binary frame header is not JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_image", "binary frame header must be a JSON object")
    header = check_fields(header, FRAME_HEADER_FIELDS)
    image = ImageData(header["format"], header["width"], header["height"], bytes(frame[4 + size:]))
    try:
        return header, image.check()
    except ProtocolError as exc:  # said of the frame's role: with a mask uploaded too, "bytes are not a PNG
        exc.field = exc.field or header["role"]  # file" left which one unsaid
        raise
