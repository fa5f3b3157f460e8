"""The files ``easel run`` and ``easel preprocess`` read and write.

Input pictures as a painter's files come (upright by their EXIF orientation, 16-bit rounded, colour
profiles, formats Pillow cannot read named), and results written as the input was: composited over it
or as a layer, in a format that keeps what the result holds (exact pixels, transparency, the colour
profile, the print resolution). Everything here is checked before a job is sent, and every refusal is a
``UsageError`` that names the option and says what to do.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, TiffImagePlugin, TiffTags, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from backend.imaging import has_alpha, painted_in_alpha, profile_is_srgb, profile_name, rgb_profile, to_array, to_png
from shared.capabilities import DEFAULT_MAX_SIDE
from shared.geometry import round_to_grid
from shared.images import ImageData
from shared.rules import upscale_size

ORIENTATION = 0x0112  # the EXIF tag phones use to say "this photo is turned"
SIDEWAYS = (5, 6, 7, 8)  # the EXIF orientations that swap width and height
# Formats `easel run --out` writes without loss, as Pillow writes them here (WebP lossless, JPEG 2000 reversible):
# every pixel reads back as it was.
LOSSLESS_FORMATS = ("PNG", "TIFF", "WEBP", "BMP", "DIB", "TGA", "PPM", "QOI", "SGI", "PCX", "IM", "JPEG2000", "DDS",
                    "EPS")
# Lossy compression, as a whole new picture is ordinarily saved (a PDF holds a JPEG): --lossy only where the edit
# keeps pixels untouched. Any other format changes more (GIF: 256 colours; ICO: icon sizes): --lossy in every mode.
LOSSY_FORMATS = ("JPEG", "MPO", "AVIF", "PDF")
PROFILE_FORMATS = ("PNG", "TIFF", "WEBP", "JPEG", "AVIF")  # those Pillow writes an ICC colour profile into
# Those that keep partial transparency as written here (Pillow's BMP is read as opaque; GIF keeps on/off at best).
ALPHA_FORMATS = ("PNG", "TIFF", "WEBP", "TGA", "AVIF", "QOI", "SGI", "IM", "JPEG2000", "DDS")
# Camera raw files: several are TIFF inside, and Pillow reads their first image, a small preview or raw data.
CAMERA_RAW = (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf",
              ".pef", ".srw", ".3fr", ".iiq", ".erf", ".kdc", ".mos", ".mrw", ".x3f")


class UsageError(Exception):
    """Something the user typed cannot work; said before any server is asked (exit status 2)."""


@dataclass
class Picture:
    """An input picture as read: upright (EXIF orientation applied), what to send, and how it was stored."""

    path: str
    upright: Image.Image
    data: ImageData
    stored_size: tuple[int, int]
    orientation: int = 1
    icc: bytes | None = None  # an RGB colour profile: the numbers are edited as they are, and results carry it
    transparent: bool = False  # some pixel is not fully opaque
    dpi: tuple[float, float] | None = None  # its print resolution, kept in results of the same pixel density

    @property
    def bytes(self) -> bytes | None:
        """The file's bytes when they are what was sent (so the server decoded the same), else None."""
        return self.data.data if self.data.format in ("png", "webp") and self.orientation == 1 else None

    @property
    def turned(self) -> bool:
        """Its EXIF orientation swaps width and height (the photo was stored sideways)."""
        return self.orientation in SIDEWAYS


# -- reading ----------------------------------------------------------------------------------


def read_picture(path: str, role: str, option: str) -> Picture:
    """The picture at ``path`` (given as ``option``): upright (EXIF orientation applied), and what to send:
    the file's own bytes when it is a PNG or WebP that needs no turning, else an 8-bit PNG of it."""
    try:
        with warnings.catch_warnings():  # (Pillow warns above 89 Mpx; a server's own limit is said below)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(path)
        if picture.format == "TIFF" and Path(path).suffix.lower() in CAMERA_RAW:  # (its small preview)
            raise UnidentifiedImageError(path)
        stored = picture.size
        frames = getattr(picture, "n_frames", 1)
        # an animated GIF / PNG / WebP / AVIF or a multi-page TIFF: said, not chosen silently (a camera's MPO
        # JPEG holds a preview after the photo, and a PSD's "frames" are its layers after the flattened
        # picture, which is what is read: nothing to say)
        if frames > 1 and picture.format in ("GIF", "PNG", "WEBP", "AVIF", "TIFF"):
            print(f"easel: note: {option} {path} has {frames} frames (pages); the first is used, and the result "
                  "is one picture", file=sys.stderr)
        # (a PNG's getexif() decodes the whole picture to look for an eXIf chunk after the pixels: not when
        # the file has none, so a PNG sent as it is is not decoded here at all)
        data = Path(path).read_bytes() if picture.format in ("PNG", "TIFF") else None
        no_exif = picture.format == "PNG" and b"eXIf" not in data
        orientation = 1 if no_exif else picture.getexif().get(ORIENTATION, 1)
        icc = rgb_profile(picture) if role == "image" else None
        fmt = {"PNG": "png", "WEBP": "webp"}.get(picture.format)
        dpi = _dpi(picture, orientation)
        if fmt and orientation == 1:  # (only a picture with alpha is decoded here, to see whether it is used)
            return Picture(path, picture, ImageData(fmt, picture.width, picture.height,
                                                    data if data is not None else Path(path).read_bytes()),
                           stored, icc=icc, transparent=_transparent(picture), dpi=dpi)
        # decoded as stored, then turned: a 16-bit PNG or TIFF is rounded from its file's bytes (v / 257), which
        # needs the stored layout; the upright picture is what is sent, so the composite uses the same numbers
        pixels = to_array(picture, "L" if role == "mask" else "RGBA" if has_alpha(picture) else "RGB", data)
        upright = Image.fromarray(pixels)
        if orientation in _EXIF_TURNS:
            upright = upright.transpose(_EXIF_TURNS[orientation])
    except FileNotFoundError:
        raise UsageError(f"{option}: cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{option}: cannot read {path}: it is a folder") from None
    except PermissionError:
        raise UsageError(f"{option}: cannot read {path}: permission denied") from None
    except UnidentifiedImageError:
        kind = _known_format(path)
        if Path(path).suffix.lower() in CAMERA_RAW:
            raise UsageError(f"{option}: cannot read {path}: it is a camera raw file, which Easel does not develop "
                             "(read as a TIFF, it gives its small preview); export it as PNG, TIFF or JPEG from "
                             "your raw developer first") from None
        if kind:
            raise UsageError(f"{option}: cannot read {path}: it is {kind}, which Easel cannot read; export it as "
                             "PNG, TIFF or JPEG first") from None
        if os.path.getsize(path) == 0:  # a download or an export that never finished: not a format to look up
            raise UsageError(f"{option}: cannot read {path}: the file is empty (0 bytes)") from None
        raise UsageError(f"{option}: cannot read {path}: not a picture (Pillow does not know its format)") from None
    except Image.DecompressionBombError:
        size = _stored_size(path)
        raise UsageError(f"{option}: cannot read {path}: {size + ' is ' if size else ''}too many pixels to decode "
                         f"safely (at most {2 * Image.MAX_IMAGE_PIXELS}); a server takes at most {DEFAULT_MAX_SIDE} "
                         "pixels a side unless its `max_side` says otherwise: scale the picture down first") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{option}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return Picture(path, upright, to_png(upright), stored, orientation, icc, _transparent(upright), dpi)


def _known_format(path: str) -> str | None:
    """What a file Pillow cannot open is, when it is a common picture format all the same (a phone's HEIC
    photo was "not a picture"); None for anything else."""
    try:
        with open(path, "rb") as file:
            head = file.read(512)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"mif2"):
            return "a HEIC/HEIF picture (as iPhones save photos)"
        if brand in (b"avif", b"avis"):
            return "an AVIF picture"
    if head.lstrip().startswith(b"%PDF"):
        return "a PDF document"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in head.lower()):
        return "an SVG drawing (vector, not pixels)"
    if head.startswith(b"\xff\x0a") or head[4:12] == b"jxl \r\n\x87\n":
        return "a JPEG XL picture"
    return None


def _stored_size(path: str) -> str:
    """``path``'s width x height from its header alone, without Pillow's pixel limit; "" if unreadable."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as picture:  # reads the header only
            return f"{picture.width}x{picture.height}"
    except Exception:  # (only for a message: the error being reported is the real one)
        return ""
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _dpi(picture: Image.Image, orientation: int) -> tuple[float, float] | None:
    """The picture's print resolution (a scan's 300 dpi), upright; None without a usable one."""
    dpi = picture.info.get("dpi")
    try:
        x, y = (round(float(value), 2) for value in dpi)
    except (TypeError, ValueError):
        return None
    if not (x > 0 and y > 0):
        return None
    return (y, x) if orientation in SIDEWAYS else (x, y)


# What turns a photo's stored pixels upright, by its EXIF orientation (as ImageOps.exif_transpose does).
_EXIF_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}


def _transparent(picture: Image.Image) -> bool:
    """Whether some pixel of the picture is not fully opaque (an RGBA export with alpha 255 everywhere is not:
    its result is opaque, and a .jpg or .bmp of it loses nothing)."""
    if "A" in picture.getbands():
        return picture.getchannel("A").getextrema()[0] < 255
    if "transparency" in picture.info:
        return picture.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def check_mask_size(image: Picture, mask: Picture) -> None:
    """Refuse a mask of another size than the picture, and say why when EXIF turned the photo."""
    if mask.upright.size == image.upright.size:
        return
    (mw, mh), (w, h) = mask.upright.size, image.upright.size
    if image.turned and mask.upright.size == image.stored_size:
        raise UsageError(
            f"--mask {mask.path} is {mw}x{mh}: the size of --image {image.path} as stored, sideways. The photo's "
            f"EXIF orientation turns it upright to {w}x{h} (as every viewer shows it), and Easel edits it upright. "
            f"Draw the mask on the upright photo, or {_TURN[image.orientation]}")
    raise UsageError(f"--mask {mask.path} is {mw}x{mh} but --image {image.path} is {w}x{h}: the mask must have "
                     "the picture's size")


# How far a mask's channels may differ and it still counts as grey (a grey mask saved as an RGB JPEG).
GREY_TOLERANCE = 24


def check_mask_grey(mask: Picture) -> None:
    """Refuse a mask in colour, which the server reads by its brightness: red strokes on black were a 30%
    edit, and strokes painted over a copy of the picture made every pixel of it part of the mask. Strokes of
    one colour on a transparent layer are fine: the server reads them by their alpha."""
    if mask.upright.mode not in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        return
    rgba = np.asarray(mask.upright.convert("RGBA"))
    alpha = rgba[..., 3]
    if not alpha.any() or painted_in_alpha(rgba):
        return
    spread = rgba[..., :3].max(axis=2).astype(np.int16) - rgba[..., :3].min(axis=2)
    spread[alpha == 0] = 0
    if spread.max() <= GREY_TOLERANCE:
        return
    y, x = np.unravel_index(int(spread.argmax()), spread.shape)
    r, g, b = rgba[y, x, :3].tolist()
    raise UsageError(f"--mask {mask.path} is in colour (its pixel at {x},{y} is {r},{g},{b}), and a mask is read by "
                     "its brightness: white = change, black = keep, so a coloured stroke counts only in part (pure "
                     "red as 30%) and a picture under the strokes counts everywhere. Save the mask as white strokes "
                     "on black (grey for a soft edge), or as strokes of one colour on a transparent layer")


# A mask that selects this much of the picture is more likely drawn white = keep than meant as it reads.
MOSTLY = 0.75


def mask_values(mask: Picture) -> np.ndarray:
    """The mask's 8-bit values as the server reads them (255 = change; transparency and 16 bits as there)."""
    return to_array(mask.upright, "L", mask.bytes)


def inverted_mask(mask: Picture) -> Picture:
    """``--invert-mask``: the mask to send, white where the given one is black (sent as an 8-bit grey PNG)."""
    flipped = Image.fromarray(255 - mask_values(mask), "L")
    if not flipped.getbbox():
        raise UsageError(f"--mask {mask.path} is white everywhere: inverted (--invert-mask), it leaves nothing to "
                         "change; leave out --invert-mask, or paint black where the picture should change")
    return replace(mask, upright=flipped, data=to_png(flipped), orientation=1)


def note_generate_size(width: int | None, height: int | None) -> None:
    """Say so when a generate's size is off the 8-pixel grid: --width 1366 wrote a 1368-wide picture unsaid."""
    moved = [f"{option} {value} is made as {round_to_grid(value)}"
             for option, value in (("--width", width), ("--height", height)) if value and round_to_grid(value) != value]
    if moved:
        print(f"easel: note: {', '.join(moved)} (a generated picture's sides are multiples of 8)", file=sys.stderr)


def note_upscale_shape(picture: tuple[int, int], width: int | None, height: int | None) -> None:
    """Say so when an upscale's --width and --height have another shape than the picture: it is stretched to
    them (a 4:3 photo asked for 3000x3000 came back squashed without a word)."""
    if not (width and height) or width < picture[0] or height < picture[1]:  # (one side, or refused: smaller)
        return
    by_width, by_height = upscale_size(*picture, target_width=width), upscale_size(*picture, target_height=height)
    if abs(by_width[1] - height) <= 1 or abs(by_height[0] - width) <= 1:  # its own shape, but for rounding
        return
    print(f"easel: note: --width {width} --height {height} stretches the {picture[0]}x{picture[1]} picture to another "
          f"shape; its own shape at that size is {by_width[0]}x{by_width[1]} or {by_height[0]}x{by_height[1]} (give "
          "only --width or --height to keep it)", file=sys.stderr)


def note_tiles(passes: list) -> None:
    """Say how a whole picture too large for one pass runs (``started``'s passes: (box, diffusion size)): a
    4096x3072 refine counted to "step 378/378" of its 20 steps with no word of its 63 tiles."""
    # a tile is diffused 1:1 (its box is its size, or less where it is cut at the picture's edge); a first stage
    # near native size is the whole picture shrunk
    tiles = [size for (_, _, width, height), size in passes if size[0] >= width and size[1] >= height]
    if len(passes) < 2 or not tiles:
        return
    first = passes[0][1]
    before = f"made at {first[0]}x{first[1]}, then " if len(tiles) < len(passes) else ""
    print(f"easel: {before}refined in {len(tiles)} tiles of {tiles[-1][0]}x{tiles[-1][1]} at full resolution (the "
          "time grows with the tiles)", file=sys.stderr)


def note_mask_coverage(mask: Picture, inverted: bool) -> None:
    """Say so when a mask selects most of the picture: a mask drawn white = keep (the other convention)
    repainted nearly everything without a word."""
    share = float((mask_values(mask) > 0).mean())
    if share < MOSTLY:
        return
    if inverted:
        said = (f"--mask {mask.path}, inverted, selects {share:.0%} of the picture (its black parts); if it is white "
                "where the picture should change, leave out --invert-mask")
    else:
        said = (f"--mask {mask.path} selects {share:.0%} of the picture (white = change, black = keep); if it is "
                "white where the picture should stay, pass --invert-mask")
    print(f"easel: note: {said}", file=sys.stderr)


# What turns a mask drawn on a photo's stored pixels the way the photo's EXIF orientation turns the photo.
_TURN = {5: "flip the mask across its top-left to bottom-right diagonal", 6: "rotate the mask 90° clockwise",
         7: "flip the mask across its top-right to bottom-left diagonal", 8: "rotate the mask 90° counter-clockwise"}


# -- writing ----------------------------------------------------------------------------------


def output_paths(out: str, count: int, option: str = "--out") -> list[Path]:
    # a folder given as the result (`--out results/`) became results.png beside it
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        raise UsageError(f"{option} {out} is a folder: give a file in it, e.g. {Path(out) / 'result.png'}")
    path = Path(out)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, count + 1)]


def _format(path: Path) -> str | None:
    """The Pillow format a file name's extension stands for (``.tif``: TIFF); None for no picture format."""
    return Image.registered_extensions().get(path.suffix.lower())


def check_outputs(paths: list[Path], option: str, force: bool) -> list[Path]:
    """``paths`` when all can be written: a picture format, an existing folder, and no file there unless
    ``force`` (all of a batch's files are checked before the GPU spends time on them)."""
    for path in paths:
        if _format(path) is None:
            raise UsageError(f"cannot write {option} {path}: {path.suffix!r} is not a picture format (use .png)")
        fmt = _format(path)
        if not _writable(fmt):  # (a .psd was refused only after the job, with a traceback)
            raise UsageError(f"cannot write {option} {path}: Easel reads {fmt} files but cannot write them; use .png "
                             "(or .tif, .webp) and open that in your editor")
        if not path.parent.is_dir():
            raise UsageError(f"cannot write {option} {path}: folder {path.parent} does not exist")
        if path.is_dir():
            raise UsageError(f"cannot write {option} {path}: it is a folder")
    existing = [str(path) for path in paths if path.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; pass --force to "
                         f"overwrite, or choose another {option}")
    return paths


def _writable(fmt: str) -> bool:
    """Whether Pillow can write ``fmt`` here: it reads PSD, FITS, XPM ... but writes none of them, and its GRIB,
    BUFR, HDF5 and WMF writers are stubs that fail unless a handler is installed."""
    save = Image.SAVE.get(fmt)
    return save is not None and "Stub" not in getattr(save, "__module__", "") and fmt != "WMF"


def keeps_untouched(mode: str, masked: bool) -> bool:
    """Whether a mode's result keeps some of the picture's pixels exactly (protocol §5.5): inpaint, remove,
    expand, an instruct with a mask. The others (generate, img2img, upscale, instruct on the whole picture)
    make a whole new picture, for which a lossy format is an ordinary choice."""
    return mode in ("inpaint", "remove", "expand") or (mode == "instruct" and masked)


def check_lossless(paths: list[Path], lossy: bool, untouched: bool) -> None:
    """Refuse, unless the user said --lossy, an output format that would change pixels the edit left
    ``untouched`` (``keeps_untouched``), or one that changes a whole new picture beyond lossy compression
    (a GIF's 256 colours: the result was written so without a word)."""
    for path in paths:
        fmt = _format(path)
        if lossy or fmt in LOSSLESS_FORMATS or (fmt in LOSSY_FORMATS and not untouched):
            continue
        what = f"{fmt} is a lossy format" if fmt in LOSSY_FORMATS else \
            "GIF keeps 256 colours at most" if fmt == "GIF" else f"{fmt} does not keep every pixel as it is"
        if untouched:
            raise UsageError(f"--out {path}: {what}: it would change the pixels the edit left untouched. Use .png "
                             "(or .webp, written lossless), or pass --lossy")
        change = "reduced to a palette of 256 colours, banding its gradients" if fmt == "GIF" else "changed"
        raise UsageError(f"--out {path}: {what}: the result would be {change}. Use .png, .webp or .jpg, or pass "
                         "--lossy to write it so")


def check_alpha_kept(paths: list[Path], transparent: bool) -> None:
    """Refuse a format that drops transparency when the result has some (a layer, a transparent input),
    --lossy or not: a JPEG or GIF showed the colours stored under the transparent pixels, never seen before."""
    for path in paths:
        fmt = _format(path)
        if transparent and fmt not in ALPHA_FORMATS:
            raise UsageError(f"--out {path}: {fmt} keeps no transparency, and this result has some (a --layer, or "
                             "a transparent --image): its transparent parts would turn opaque, showing whatever "
                             "colour is stored under them. Use .png, .webp, .tif or .tga")


def check_profile_kept(paths: list[Path], image: Picture | None, lossy_needed: bool = True) -> None:
    """Refuse a format that cannot carry the picture's colour profile when dropping it would change how the
    result looks (a wide-gamut photo's numbers read as sRGB: duller colours, untouched parts too)."""
    if image is None or not image.icc:
        return
    for path in paths:
        fmt = _format(path)
        if fmt not in PROFILE_FORMATS and not profile_is_srgb(image.icc):
            raise UsageError(f"--out {path}: {fmt} keeps no colour profile, and --image {image.path} has one "
                             f"({profile_name(image.icc)}): without it every colour of the result would look "
                             "different. Use .png, .webp, .tif or .jpg" + " (with --lossy)" * lossy_needed)


def result_picture(image: ImageData, offset: tuple[int, int], source: Picture | None, *, whole: bool,
                   layer: bool) -> Image.Image:
    """A result as the picture to write: the whole new picture (``whole``: expand, upscale), else the layer
    composited over the input, or alone on transparency (``layer``)."""
    if whole:
        return _whole(image)
    return _place(_pixels(image), offset, source.upright if source else None, transparent=layer,
                  data=source.bytes if source else None)


# JPEG at a result's own quality, as a painter saves one: Pillow's default (75, colour at half resolution)
# blurred colour edges and left ~7x the error. WebP lossless, keeping the colours under transparent pixels.
_SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"lossless": True, "exact": True}}


def write_picture(picture: Image.Image, path: Path, source: Picture | None, *, resampled: bool = False,
                  infotext: str | None = None) -> None:
    """Write a result in its path's format, with the input's colour profile, its print resolution (``resampled``,
    an upscale: the input's print size, so as many more pixels an inch as it has more pixels) and ``infotext``
    where the WebUI keeps its own (a PNG's "parameters" text, the EXIF user comment of a JPEG, WebP or AVIF);
    Pillow's OSError or ValueError when it cannot."""
    fmt = _format(path)
    if fmt == "JPEG":
        picture = picture.convert("RGB")  # JPEG has no alpha
    options = dict(_SAVE_OPTIONS.get(fmt, {}))
    if source is not None and source.icc and fmt in PROFILE_FORMATS:
        options["icc_profile"] = source.icc
    if source is not None and source.dpi:
        # (an upscale's was dropped: 72 dpi in most editors, its print size many times the input's)
        width, height = source.upright.size
        options["dpi"] = (source.dpi[0] * picture.width / width, source.dpi[1] * picture.height / height) \
            if resampled else source.dpi
    if infotext and fmt == "PNG":
        options["pnginfo"] = PngInfo()
        options["pnginfo"].add_text("parameters", infotext)  # (iTXt when it is not Latin-1)
    elif infotext and fmt in ("JPEG", "WEBP", "AVIF"):
        options["exif"] = _user_comment(infotext)
    picture.save(path, **options)


def _user_comment(text: str) -> bytes:
    """EXIF holding ``text`` as its UserComment, in UTF-16 as the WebUI writes it (and reads it, with piexif).
    Pillow's Exif writes a nested IFD's bytes as BYTE, which piexif reads as numbers: the Exif IFD is made
    here with the UNDEFINED type that the EXIF standard gives the tag, behind a one-entry IFD0 pointing at it."""
    head = b"II*\0" + struct.pack("<L", 8)
    exif_ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=head, group=ExifTags.IFD.Exif)
    exif_ifd.tagtype[ExifTags.Base.UserComment] = TiffTags.UNDEFINED
    exif_ifd[ExifTags.Base.UserComment] = b"UNICODE\0" + text.encode("utf-16-be")
    where = len(head) + 2 + 12 + 4  # after IFD0: its entry count, one entry, the next IFD's offset (none)
    ifd0 = struct.pack("<HHHLLL", 1, ExifTags.IFD.Exif, TiffTags.LONG, 1, where, 0)
    return b"Exif\0\0" + head + ifd0 + exif_ifd.tobytes(where)


def _whole(image: ImageData) -> Image.Image:
    """An expand's or an upscale's result as the picture to write: RGB when it is opaque, else RGBA. Made
    without _pixels's array copies: an 8192x6144 upscale took 717 MB in easel run, most of it copies."""
    if image.format == "rgba8":
        picture = Image.frombuffer("RGBA", (image.width, image.height), image.data, "raw", "RGBA", 0, 1)
    else:
        picture = Image.open(io.BytesIO(image.data))
        picture.load()
    if picture.mode not in ("RGB", "RGBA"):
        picture = picture.convert("RGBA")
    if picture.mode == "RGBA" and picture.getchannel("A").getextrema()[0] == 255:
        picture = picture.convert("RGB")
    return picture


def _pixels(image: ImageData) -> np.ndarray:
    """A result image as an RGBA array."""
    if image.format == "rgba8":
        return np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 4)
    return np.asarray(Image.open(io.BytesIO(image.data)).convert("RGBA"))


def _place(layer: np.ndarray, offset: tuple[int, int], source: Image.Image | None, *, transparent: bool,
           data: bytes | None = None) -> Image.Image:
    """The result as a picture: the layer composited over the input (or alone, on transparency);
    ``data``: the input file's bytes (16-bit colour is then rounded as the server rounds it)."""
    from shared.compose import composite

    if source is None:
        return Image.fromarray(layer[..., :3] if layer[..., 3].min() == 255 else layer)
    if transparent:
        base = np.zeros((source.height, source.width, 4), np.uint8)
        base[offset[1]:offset[1] + layer.shape[0], offset[0]:offset[0] + layer.shape[1]] = layer
        return Image.fromarray(base, "RGBA")
    base = to_array(source, "RGBA" if has_alpha(source) else "RGB", data)
    return Image.fromarray(composite(base, layer, offset))
