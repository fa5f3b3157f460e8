"""Pixels in and out: decoded pictures to the arrays the engine uses, arrays to transport bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.images import ImageData, eight_bit_grey
from shared.vocabulary import LINE_MAP_TYPES, PICTURE_CONTROL_TYPES


def to_array(picture: Image.Image, mode: str, data: bytes | None = None) -> np.ndarray:
    """The picture as a uint8 array in Pillow ``mode`` (RGBA, RGB or L).

    16-bit greyscale is scaled to 8 bits (Pillow's own conversion clips it), and so is 16-bit colour
    when ``data`` (the file's bytes) is given: Pillow keeps only the high byte of a 16-bit RGB(A) PNG,
    which leaves a third of the pixels one level off; here each value is rounded, v / 257. A 32-bit
    float picture (a float TIFF) whose values all lie within 0..1, as painting and HDR programs write
    them, is scaled by 255 (Pillow reads floats as 0..255 levels, which left it black). A CMYK picture
    with its CMYK profile embedded is converted to sRGB through that profile, as a colour-managed viewer
    shows it, and so is a grey picture with a grey profile (gamma 1.8, linear …) made into colour (RGB(A)):
    an RGB result cannot carry a grey profile, and its numbers read as sRGB looked lighter or darker. For
    a mask (mode L) with transparency, transparent means "keep", whatever its colour, and strokes all of
    one colour are read by their alpha.
    """
    icc = picture.info.get("icc_profile")
    wide = wide_colour(data, _tiff_bits(picture)) if data is not None and picture.mode in ("RGB", "RGBA") else None
    if wide is not None and wide.shape[:2] == (picture.height, picture.width):
        picture = Image.fromarray(wide, "RGBA" if wide.shape[2] == 4 else "RGB")
    picture = eight_bit_grey(picture)
    if picture.mode == "CMYK":
        picture = _cmyk_to_srgb(picture)
    if mode != "L" and icc and picture.mode in ("L", "LA"):
        picture = _grey_to_srgb(picture, icc)
    if mode == "L" and has_alpha(picture):
        return _mask_with_alpha(picture.convert("RGBA"))
    return np.array(picture.convert(mode))


def _mask_with_alpha(rgba: Image.Image) -> np.ndarray:
    """A mask with transparency as 8-bit values: luminance x alpha (transparent means keep), or, for strokes
    of one colour on a transparent layer, the alpha alone."""
    pixels = np.asarray(rgba)
    if painted_in_alpha(pixels):
        return pixels[..., 3].copy()
    luma = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.uint16)
    return (luma * pixels[..., 3].astype(np.uint16) // 255).astype(np.uint8)


def painted_in_alpha(rgba: np.ndarray) -> bool:
    """Whether an RGBA mask is strokes of one colour on transparency, so that only its alpha says where the
    painter painted. Black strokes on a transparent layer (A1111 takes an RGBA mask's alpha) read as luminance
    were an empty mask, and red ones a 30% edit."""
    alpha = rgba[..., 3]
    visible = rgba[..., :3][alpha > 0]
    return bool(alpha.min() < 255 and len(visible) and (visible == visible[0]).all())


def over(rgba: np.ndarray, background: int) -> np.ndarray:
    """RGBA laid over an opaque grey ``background`` (0 black ... 255 white): opaque RGBA."""
    alpha = rgba[..., 3:].astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * alpha + background * (255 - alpha) + 127) // 255
    return np.dstack([rgb.astype(np.uint8), np.full(rgba.shape[:2], 255, np.uint8)])


def opaque_control(rgba: np.ndarray, control_type: str | None, preprocess: bool) -> np.ndarray:
    """A control image (``control_type`` None: a reference) as the opaque picture it stands for. A transparent
    pixel's stored colour is no picture (black, or what was erased there): a sketch of dark lines on a
    transparent layer, as exported by a paint program or a web canvas, read as a black map with nothing on
    it. A picture (one to preprocess, a tile / shuffle / inpaint unit, a reference) goes over white paper; a
    ready line map on a mostly transparent layer is its strokes, white on black, whatever their colour;
    any other ready map goes over black, its "nothing here". The rule Krita's plugin applies itself."""
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return rgba
    if control_type is None or preprocess or control_type in PICTURE_CONTROL_TYPES:
        return over(rgba, 255)
    if control_type in LINE_MAP_TYPES and (alpha == 0).mean() > 0.5:
        return np.dstack([alpha, alpha, alpha, np.full_like(alpha, 255)])
    return over(rgba, 0)


def has_alpha(picture: Image.Image) -> bool:
    """Whether the picture has an alpha channel or a transparent colour (a palette's or a PNG's tRNS)."""
    return "A" in picture.getbands() or "transparency" in picture.info


def _profile(icc: bytes | None, space: str | None = None):
    """The ICC profile ``icc`` as littleCMS reads it, when it describes ``space`` ("RGB", "GRAY", "CMYK"; any
    when None); None without one or for one it cannot read."""
    from PIL import ImageCms

    if not icc:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (ImageCms.PyCMSError, OSError, TypeError, ValueError):
        return None
    return profile if space is None or profile.profile.xcolor_space.strip() == space else None


def _to_srgb(picture: Image.Image, profile) -> Image.Image | None:
    """``picture`` converted from ``profile`` to sRGB RGB; None where littleCMS cannot."""
    from PIL import ImageCms

    try:
        return ImageCms.profileToProfile(picture, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, TypeError, ValueError):
        return None


def _cmyk_to_srgb(picture: Image.Image) -> Image.Image:
    """A CMYK picture as sRGB through its embedded CMYK profile (a print file's colours as a colour-managed
    viewer shows them: Pillow's own conversion makes 100% cyan 0,255,255, far brighter than any ink); the
    picture as it is without a readable CMYK profile (Pillow's conversion then applies)."""
    profile = _profile(picture.info.get("icc_profile"), "CMYK")
    return (_to_srgb(picture, profile) if profile else None) or picture


def _grey_to_srgb(picture: Image.Image, icc: bytes) -> Image.Image:
    """A grey (L or LA) picture as sRGB RGB(A) through its embedded grey profile; as it is when the profile
    is not a grey one littleCMS can read (the picture's numbers are then taken as sRGB greys)."""
    profile = _profile(icc, "GRAY")
    if profile is None:
        return picture
    if picture.mode == "L" and "transparency" in picture.info:
        picture = picture.convert("LA")
    rgb = _to_srgb(picture.getchannel("L"), profile)
    if rgb is None:
        return picture
    if picture.mode == "LA":
        rgb.putalpha(picture.getchannel("A"))
    return rgb


def _tiff_bits(picture: Image.Image) -> tuple[int, ...]:
    """A TIFF's bits per sample (its tag 258); () for any other picture."""
    tags = getattr(picture, "tag_v2", None)
    bits = tags.get(258, ()) if tags is not None else ()
    return tuple(bits) if isinstance(bits, (tuple, list)) else (bits,)


def wide_colour(data: bytes, tiff_bits: tuple[int, ...] = ()) -> np.ndarray | None:
    """A 16-bit RGB or RGBA PNG's or TIFF's pixels (the first page, as stored: no orientation applied) rounded
    to 8 bits (v / 257), or None for any other file; ``tiff_bits``: the TIFF's bits per sample, as Pillow read
    them (Pillow keeps the high byte of a 16-bit colour TIFF, as of a PNG)."""
    if data[:4] in (b"II*\0", b"MM\0*"):
        if not tiff_bits or set(tiff_bits) != {16}:
            return None
    elif len(data) < 26 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    elif data[24] != 16 or data[25] not in (2, 6):  # bit depth 16; colour type RGB or RGBA
        return None
    import cv2

    wide = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if wide is None or wide.dtype != np.uint16 or wide.ndim != 3:
        return None
    order = [2, 1, 0, 3] if wide.shape[2] == 4 else [2, 1, 0]  # OpenCV reads BGR(A)
    return ((wide[..., order].astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)


def to_png(picture: Image.Image) -> ImageData:
    """A picture as a PNG to send."""
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return ImageData("png", picture.width, picture.height, buffer.getvalue())


def encode(pixels: np.ndarray, fmt: str) -> ImageData:
    """RGBA pixels as transport bytes; WebP is lossless and keeps colour under zero alpha."""
    height, width = pixels.shape[:2]
    if fmt == "rgba8":
        return ImageData(fmt, width, height, np.ascontiguousarray(pixels).tobytes())
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, "RGBA")
    if fmt == "webp":
        image.save(buffer, "WEBP", lossless=True, exact=True)
    else:
        image.save(buffer, "PNG", compress_level=1)
    return ImageData(fmt, width, height, buffer.getvalue())


def rgb_profile(picture: Image.Image) -> bytes | None:
    """The picture's embedded ICC profile when it describes RGB colour (Adobe RGB, Display P3, sRGB …);
    None without one, for grey or CMYK ones, and for a profile littleCMS cannot read."""
    icc = picture.info.get("icc_profile")
    return icc if _profile(icc, "RGB") is not None else None


def profile_is_srgb(icc: bytes) -> bool:
    """Whether an RGB profile shows every colour as sRGB does (within a level): dropping it changes nothing."""

    profile = _profile(icc, "RGB")
    levels = np.linspace(0, 255, 6).astype(np.uint8)
    cube = np.stack(np.meshgrid(levels, levels, levels), -1).reshape(1, -1, 3)
    seen = _to_srgb(Image.fromarray(cube, "RGB"), profile) if profile is not None else None
    return seen is not None and int(np.abs(np.asarray(seen, np.int16) - cube).max()) <= 1


def profile_name(icc: bytes) -> str:
    """The profile's own description (``Adobe RGB (1998)``), for messages."""
    from PIL import ImageCms

    profile = _profile(icc)
    return (ImageCms.getProfileDescription(profile).strip() if profile is not None else "") or "unnamed"
