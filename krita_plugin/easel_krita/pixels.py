"""Pixel byte conversions between Krita's layouts and the protocol's 8-bit sRGB RGBA.

Krita hands out ``Node.pixelData`` as B,G,R,A for 8- and 16-bit integer documents and R,G,B,A
for float ones (little-endian, no row padding). Its 16-bit and float documents normally use a
linear-light profile, while the model sees sRGB; these functions do both steps. Pure Python on
``bytes`` (Krita's Python has no numpy), using slice assignment and lookup tables for speed.
"""

from __future__ import annotations

import struct
import sys
from array import array

DEPTHS = ("U8", "U16", "F16", "F32")
BYTES_PER_CHANNEL = {"U8": 1, "U16": 2, "F16": 2, "F32": 4}


class UnsupportedColor(ValueError):
    """The document's colour model or depth cannot be converted; the message is for the painter."""


def check_color(model: str, depth: str) -> None:
    """Raise UnsupportedColor with a sentence unless the document is RGBA of a known depth."""
    if model != "RGBA":
        names = {"CMYKA": "CMYK", "GRAYA": "greyscale", "LABA": "L*a*b*", "XYZA": "XYZ", "YCbCrA": "YCbCr"}
        raise UnsupportedColor(
            f"Easel works on RGB documents, and this one is {names.get(model, model)}. "
            "Convert it with Image > Convert Image Color Space… (RGB/Alpha) and try again.")
    if depth not in DEPTHS:
        raise UnsupportedColor(f"Easel cannot read {depth} RGB documents; use 8-bit, 16-bit or float.")


def is_linear_profile(profile: str) -> bool:
    """Whether a Krita colour profile name describes linear light (gamma 1.0)."""
    name = profile.lower()
    return "g10" in name or "linear" in name or "gamma 1.0" in name or "scrgb" in name


def srgb_to_linear(value: float) -> float:
    """One sRGB-encoded channel (0..1) to linear light."""
    return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4


def linear_to_srgb(value: float) -> float:
    """One linear-light channel (0..1) to sRGB encoding."""
    return value * 12.92 if value <= 0.0031308 else 1.055 * value ** (1 / 2.4) - 0.055


def swap_red_blue(data: bytes) -> bytes:
    """B,G,R,A <-> R,G,B,A for 8-bit pixels (the same swap both ways)."""
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes are not whole 4-channel pixels")
    out = bytearray(data)
    out[0::4] = data[2::4]
    out[2::4] = data[0::4]
    return bytes(out)


# --- lookup tables, built on first use ------------------------------------------------------

_LUTS: dict[str, object] = {}


def _u16_to_u8(linear: bool) -> bytes:
    key = f"u16-u8-{linear}"
    if key not in _LUTS:
        if linear:
            _LUTS[key] = bytes(round(linear_to_srgb(v / 65535) * 255) for v in range(65536))
        else:
            _LUTS[key] = bytes((v * 255 + 32767) // 65535 for v in range(65536))
    return _LUTS[key]


def _u8_to_u16(linear: bool) -> array:
    key = f"u8-u16-{linear}"
    if key not in _LUTS:
        convert = (lambda v: srgb_to_linear(v / 255)) if linear else (lambda v: v / 255)
        _LUTS[key] = array("H", (round(convert(v) * 65535) for v in range(256)))
    return _LUTS[key]


def _u8_to_float(linear: bool) -> list[float]:
    key = f"u8-f-{linear}"
    if key not in _LUTS:
        _LUTS[key] = [srgb_to_linear(v / 255) if linear else v / 255 for v in range(256)]
    return _LUTS[key]


_FLOAT_STEPS = 65535  # floats are quantised to 16 bits before the table lookup: finer than 8-bit sRGB


def _float_to_u8(linear: bool) -> bytes:
    return _u16_to_u8(linear)


def _floats(data: bytes, depth: str) -> array | list:
    if depth == "F32":
        values = array("f")
        values.frombytes(data)
    else:  # F16: array has no half type; struct does
        values = struct.unpack(f"<{len(data) // 2}e", data)
    if sys.byteorder != "little" and depth == "F32":
        values.byteswap()
    return values


def _pack_floats(values: list[float], depth: str) -> bytes:
    if depth == "F32":
        out = array("f", values)
        if sys.byteorder != "little":
            out.byteswap()
        return out.tobytes()
    return struct.pack(f"<{len(values)}e", *values)


# --- whole conversions ----------------------------------------------------------------------

def to_rgba8(data: bytes, depth: str, linear: bool) -> bytes:
    """Krita pixel bytes of ``depth`` (U8/U16 as BGRA, floats as RGBA) to sRGB 8-bit RGBA.

    ``linear``: the document's profile is linear light, so colour channels get the sRGB curve.
    Alpha is never curved.
    """
    if depth == "U8":
        return swap_red_blue(data)
    if depth == "U16":
        values = array("H")
        values.frombytes(data)
        if sys.byteorder != "little":
            values.byteswap()
        colour, alpha = _u16_to_u8(linear), _u16_to_u8(False)
        out = bytearray(len(values))
        out[2::4] = bytes(colour[v] for v in values[0::4])  # B
        out[1::4] = bytes(colour[v] for v in values[1::4])  # G
        out[0::4] = bytes(colour[v] for v in values[2::4])  # R
        out[3::4] = bytes(alpha[v] for v in values[3::4])
        return bytes(out)
    if depth in ("F16", "F32"):
        values = _floats(data, depth)
        colour, alpha = _float_to_u8(linear), _float_to_u8(False)
        top = _FLOAT_STEPS

        def index(v: float) -> int:
            # Clamp (HDR and negative values exist in float documents) then quantise.
            return 0 if not v > 0 else top if v >= 1 else int(v * top + 0.5)

        out = bytearray(len(values))
        for channel in range(3):
            out[channel::4] = bytes(colour[index(v)] for v in values[channel::4])
        out[3::4] = bytes(alpha[index(v)] for v in values[3::4])
        return bytes(out)
    raise UnsupportedColor(f"unknown colour depth {depth}")


def from_rgba8(data: bytes, depth: str, linear: bool) -> bytes:
    """sRGB 8-bit RGBA to Krita pixel bytes of ``depth`` (the inverse of ``to_rgba8``)."""
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes are not whole RGBA pixels")
    if depth == "U8":
        return swap_red_blue(data)
    if depth == "U16":
        colour, alpha = _u8_to_u16(linear), _u8_to_u16(False)
        out = array("H", bytes(len(data) * 2))
        out[0::4] = array("H", (colour[v] for v in data[2::4]))
        out[1::4] = array("H", (colour[v] for v in data[1::4]))
        out[2::4] = array("H", (colour[v] for v in data[0::4]))
        out[3::4] = array("H", (alpha[v] for v in data[3::4]))
        if sys.byteorder != "little":
            out.byteswap()
        return out.tobytes()
    if depth in ("F16", "F32"):
        colour, alpha = _u8_to_float(linear), _u8_to_float(False)
        values = [0.0] * len(data)
        for channel in range(3):
            values[channel::4] = [colour[v] for v in data[channel::4]]
        values[3::4] = [alpha[v] for v in data[3::4]]
        return _pack_floats(values, depth)
    raise UnsupportedColor(f"unknown colour depth {depth}")


def bytes_per_pixel(depth: str) -> int:
    return 4 * BYTES_PER_CHANNEL[depth]
