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


def exact_profile(profile: str) -> bool:
    """Whether ``to_rgba8`` / ``from_rgba8`` are exact for a Krita profile: sRGB primaries with the sRGB
    curve or linear light. Any other profile (Adobe RGB-compatible, Rec.2020, Rec.709's curve, gamma 2.2,
    ones this list does not know) goes through Krita's own colour management instead. Krita's own
    "scRGB (linear)" is not sRGB's primaries, whatever its name: Krita shows its pure red as sRGB
    (255, 16, 25), so the exact conversion was off by 84 levels there (measured)."""
    name = profile.lower().strip()
    primaries = name.startswith(("srgb", "artifex software srgb", "artifex software scrgb")) \
        or "lcms srgb built-in" in name
    curve = "srgbtrc" in name or "built-in" in name or name.startswith("artifex") or is_linear_profile(profile)
    return primaries and curve


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
#
# Every deep format is read as 16-bit codes, each looked up in a 65536-entry table: U16 values
# directly, F16 values by their bits, and F32 values by their upper 16 bits (a bfloat16, 8 bits of
# precision, at the middle of its range), which is plenty for an 8-bit result. Mapping a table over
# a memoryview runs at C speed; Krita's Python has no numpy.

_LUTS: dict[str, object] = {}


def _clamped(value: float) -> float:
    return 0.0 if not value > 0 else 1.0 if value >= 1 else value  # NaN and negatives -> 0, HDR -> 1


def _table(key: str, decode, linear: bool) -> bytes:
    name = f"{key}-{linear}"
    if name not in _LUTS:
        curve = linear_to_srgb if linear else (lambda v: v)
        _LUTS[name] = bytes(round(curve(_clamped(decode(code))) * 255) for code in range(65536))
    return _LUTS[name]


def _u16(code: int) -> float:
    return code / 65535


def _half(code: int) -> float:
    return struct.unpack("<e", struct.pack("<H", code))[0]


def _bfloat(code: int) -> float:
    return struct.unpack("<f", struct.pack("<I", code << 16 | 0x8000))[0]


_DECODERS = {"U16": _u16, "F16": _half, "F32": _bfloat}


def _u8_to_u16(linear: bool) -> array:
    key = f"u8-u16-{linear}"
    if key not in _LUTS:
        convert = (lambda v: srgb_to_linear(v / 255)) if linear else (lambda v: v / 255)
        _LUTS[key] = array("H", (round(convert(v) * 65535) for v in range(256)))
    return _LUTS[key]


def _u8_to_float(linear: bool, code: str) -> array:
    """8-bit value -> float, as an array of ``code``: "f" (float32) or "H" (float16 bit patterns)."""
    key = f"u8-{code}-{linear}"
    if key not in _LUTS:
        values = [srgb_to_linear(v / 255) if linear else v / 255 for v in range(256)]
        if code == "H":
            values = [struct.unpack("<H", struct.pack("<e", value))[0] for value in values]
        _LUTS[key] = array(code, values)
    return _LUTS[key]


# --- whole conversions ----------------------------------------------------------------------
# Krita stores pixels little-endian on every platform it ships for; so do these functions.

def to_rgba8(data: bytes, depth: str, linear: bool) -> bytes:
    """Krita pixel bytes of ``depth`` (U8/U16 as BGRA, floats as RGBA) to sRGB 8-bit RGBA.

    ``linear``: the document's profile is linear light, so colour channels get the sRGB curve.
    Alpha is never curved. Out-of-range float values (HDR, negative) are clamped.
    """
    if depth == "U8":
        return _curve_u8(swap_red_blue(data), linear, to_srgb=True)
    if depth not in _DECODERS:
        raise UnsupportedColor(f"unknown colour depth {depth}")
    if len(data) % bytes_per_pixel(depth):
        raise ValueError(f"{len(data)} bytes are not whole {depth} pixels")
    codes = memoryview(bytes(data)).cast("H")
    if depth == "F32":
        codes = codes[1::2]  # the upper half of each float
    colour = _table(depth, _DECODERS[depth], linear)
    alpha = _table(depth, _DECODERS[depth], False)
    order = (2, 1, 0) if depth == "U16" else (0, 1, 2)  # where R, G, B sit in Krita's pixel
    out = bytearray(len(codes))
    for target, source in enumerate(order):
        out[target::4] = bytes(map(colour.__getitem__, codes[source::4]))
    out[3::4] = bytes(map(alpha.__getitem__, codes[3::4]))
    return bytes(out)


def from_rgba8(data: bytes, depth: str, linear: bool) -> bytes:
    """sRGB 8-bit RGBA to Krita pixel bytes of ``depth`` (the inverse of ``to_rgba8``)."""
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes are not whole RGBA pixels")
    if depth == "U8":
        return swap_red_blue(_curve_u8(data, linear, to_srgb=False))
    if depth == "U16":
        colour, alpha = _u8_to_u16(linear), _u8_to_u16(False)
        out = array("H", bytes(len(data) * 2))
        for target, source in enumerate((2, 1, 0)):
            out[target::4] = array("H", map(colour.__getitem__, data[source::4]))
        out[3::4] = array("H", map(alpha.__getitem__, data[3::4]))
        return out.tobytes()
    if depth in ("F16", "F32"):
        # Typed arrays throughout: a float canvas is millions of values, too many for Python lists.
        code = "f" if depth == "F32" else "H"
        colour, alpha = _u8_to_float(linear, code), _u8_to_float(False, code)
        out = array(code, bytes(len(data) * BYTES_PER_CHANNEL[depth]))
        for channel in range(3):
            out[channel::4] = array(code, map(colour.__getitem__, data[channel::4]))
        out[3::4] = array(code, map(alpha.__getitem__, data[3::4]))
        return out.tobytes()
    raise UnsupportedColor(f"unknown colour depth {depth}")


def _curve_u8(data: bytes, linear: bool, to_srgb: bool) -> bytes:
    """Apply the sRGB curve (or its inverse) to the colour channels of 8-bit pixels with a
    linear profile (rare at 8 bits, and lossy in the dark tones, but Krita allows it)."""
    if not linear:
        return data
    curve = (lambda v: linear_to_srgb(v / 255)) if to_srgb else (lambda v: srgb_to_linear(v / 255))
    out = bytearray(data.translate(bytes(round(curve(v) * 255) for v in range(256))))
    out[3::4] = data[3::4]  # alpha is not curved
    return bytes(out)


def flatten(rgba: bytes, background: int) -> bytes:
    """8-bit RGBA laid over an opaque grey ``background`` (0 black ... 255 white): opaque RGBA.

    The model uses only the RGB of a control image or a reference, but a Krita layer's transparent
    pixels hold black (or whatever colour was erased there): a sketch of dark lines on a transparent
    layer reads as a black picture with nothing on it. A picture goes over white (paper), a ready
    control map over black (its "nothing here"); partly transparent pixels (anti-aliased edges) blend."""
    if len(rgba) % 4:
        raise ValueError(f"{len(rgba)} bytes are not whole RGBA pixels")
    alpha = rgba[3::4]
    if alpha.count(255) == len(alpha):
        return bytes(rgba)
    table = _over_table(background)
    pair = bytearray(len(rgba) // 2)  # (colour, alpha) byte pairs read as one 16-bit code: a table index
    pair[1::2] = alpha
    codes = memoryview(pair).cast("H")
    out = bytearray(len(rgba))
    for channel in range(3):
        pair[0::2] = rgba[channel::4]
        out[channel::4] = bytes(map(table.__getitem__, codes))
    out[3::4] = b"\xff" * len(alpha)
    return bytes(out)


def strokes(rgba: bytes) -> bytes:
    """What is painted on a transparent layer as white lines on black (opaque RGBA): the coverage (alpha)
    of each pixel, whatever its colour. A sketch in dark strokes on a transparent layer is a line map so."""
    alpha = rgba[3::4]
    out = bytearray(len(rgba))
    for channel in range(3):
        out[channel::4] = alpha
    out[3::4] = b"\xff" * len(alpha)
    return bytes(out)


def mostly_transparent(rgba: bytes) -> bool:
    """Whether more than half of the pixels are fully transparent (strokes on an empty layer, not a map)."""
    alpha = rgba[3::4]
    return alpha.count(0) * 2 > len(alpha)


def _over_table(background: int) -> bytes:
    """colour ``c`` at alpha ``a`` over ``background``, indexed by the 16-bit code of the bytes (c, a)."""
    key = f"over-{background}"
    if key not in _LUTS:
        table = bytearray(65536)
        for a in range(256):
            for c in range(256):
                code = int.from_bytes(bytes((c, a)), sys.byteorder)
                table[code] = (c * a + background * (255 - a) + 127) // 255
        _LUTS[key] = bytes(table)
    return _LUTS[key]


def bytes_per_pixel(depth: str) -> int:
    return 4 * BYTES_PER_CHANNEL[depth]
