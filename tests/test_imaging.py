"""Decoding pictures the way painters' files come: 16-bit, palettes, masks with transparency, colour profiles."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.imaging import encode, to_array
from conftest import decode


def test_16_bit_grey_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    pixels = to_array(Image.fromarray(ramp), "RGB")  # mode I;16, as 16-bit PNGs open
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[-1, -1].tolist() == [255, 255, 255]
    assert 120 <= pixels[8, 0, 0] <= 135, "mid-grey stays mid-grey"


def test_mask_transparency_means_keep():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 255          # white everywhere ...
    rgba[:2, :, 3] = 255         # ... but only the top half opaque
    mask = to_array(Image.fromarray(rgba, "RGBA"), "L")
    assert (mask[:2] == 255).all() and (mask[2:] == 0).all()
    assert (to_array(Image.fromarray(np.full((4, 4), 200, np.uint8), "L"), "L") == 200).all()


def test_strokes_of_one_colour_on_a_transparent_layer_are_read_by_their_alpha():
    """Black strokes on transparency (A1111 reads an RGBA mask's alpha) were an empty mask, red ones a 30%
    edit: painted in one colour, the alpha alone says where the painter painted."""
    for colour in ((0, 0, 0), (255, 0, 0), (255, 255, 255)):
        rgba = np.zeros((4, 4, 4), np.uint8)
        rgba[..., :3] = colour
        rgba[:2, :, 3] = 255
        rgba[2, :, 3] = 100  # a soft edge
        mask = to_array(Image.fromarray(rgba, "RGBA"), "L")
        assert mask[:2].min() == 255 and (mask[2] == 100).all() and (mask[3] == 0).all(), colour
    mixed = np.zeros((4, 4, 4), np.uint8)
    mixed[..., 3] = 255
    mixed[0, :, :3] = 255  # white strokes on opaque black, beside a transparent corner: luminance x alpha
    mixed[3, 3, 3] = 0
    assert to_array(Image.fromarray(mixed, "RGBA"), "L")[:, 0].tolist() == [255, 0, 0, 0]
    opaque_black = np.zeros((4, 4, 4), np.uint8)
    opaque_black[..., 3] = 255  # one colour, but nothing transparent: black, keep everything
    assert not to_array(Image.fromarray(opaque_black, "RGBA"), "L").any()


def test_palette_pictures_decode_to_their_colours():
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putpixel((1, 0), 1)
    assert to_array(palette, "RGBA")[0].tolist() == [[255, 0, 0, 255], [0, 0, 255, 255]]


def test_encoded_results_keep_colour_under_zero_alpha():
    layer = np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    layer[:4, :, 3] = 0
    for fmt in ("png", "webp", "rgba8"):
        assert (decode(encode(layer, fmt)) == layer).all(), fmt


KRITA_PROFILES = Path("/usr/share/color/icc/krita")  # Debian's krita-data, which the Krita tests install


def krita_profile(name: str) -> bytes:
    if not (KRITA_PROFILES / name).is_file():
        pytest.skip(f"{name} comes with Krita's data (apt-get install krita)")
    return (KRITA_PROFILES / name).read_bytes()


def test_a_pictures_rgb_colour_profile_is_found_and_told_from_srgb():
    from PIL import ImageCms

    from backend.imaging import profile_is_srgb, profile_name, rgb_profile

    adobe_like, grey = krita_profile("ClayRGB-elle-V2-g22.icc"), krita_profile("Gray-D50-elle-V2-g22.icc")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged = Image.new("RGB", (4, 4))
    assert rgb_profile(tagged) is None
    for icc, kept in ((adobe_like, adobe_like), (srgb, srgb), (grey, None), (b"not a profile", None)):
        tagged.info["icc_profile"] = icc
        assert rgb_profile(tagged) == kept
    assert not profile_is_srgb(adobe_like) and not profile_is_srgb(krita_profile("Rec2020-elle-V4-g10.icc"))
    assert profile_is_srgb(srgb) and profile_is_srgb(krita_profile("sRGB-elle-V2-srgbtrc.icc"))
    assert profile_name(adobe_like) == "ClayRGB-elle-V2-g22.icc" and profile_name(b"junk") == "unnamed"


def test_float_pictures_within_0_to_1_are_scaled_not_left_black():
    # A 32-bit float TIFF (values 0..1, as Krita or an HDR tool writes it) came out black: Pillow reads 0..255.
    ramp = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    pixels = to_array(Image.fromarray(ramp, "F"), "RGB")
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[-1, -1].tolist() == [255, 255, 255]
    assert 125 <= pixels[8, 0, 0] <= 130, "mid-grey stays mid-grey"
    levels = to_array(Image.fromarray(ramp * 255, "F"), "L")  # a float picture in 0..255 levels keeps them
    assert levels[0, 0] == 0 and levels[-1, -1] == 255 and 125 <= levels[8, 0] <= 130


def test_cmyk_with_its_profile_is_converted_through_it():
    # A print file's 100% cyan came out 0,255,255 (Pillow's own conversion), far brighter than the ink.
    from PIL import ImageCms

    cmyk = krita_profile("cmyk.icm")
    cyan = Image.new("CMYK", (4, 4), (255, 0, 0, 0))
    plain = to_array(cyan, "RGB")[0, 0].tolist()
    assert plain == [0, 255, 255], "without a profile: Pillow's conversion"
    cyan.info["icc_profile"] = cmyk
    seen = to_array(cyan, "RGB")[0, 0].tolist()
    expected = ImageCms.profileToProfile(cyan, ImageCms.ImageCmsProfile(io.BytesIO(cmyk)),
                                         ImageCms.createProfile("sRGB"), outputMode="RGB").getpixel((0, 0))
    assert seen == list(expected) and seen[1] < 200


def test_a_grey_picture_with_a_grey_profile_becomes_the_colours_it_shows():
    # A scan with a gamma 1.8 grey profile came back as RGB without it: its numbers read as sRGB, every grey
    # darker than in the viewer (32 shows as 43 there). A mask's numbers are numbers: they stay.
    from PIL import ImageCms

    g18 = krita_profile("Gray-D50-elle-V4-g18.icc")
    grey = Image.fromarray(np.array([[32, 64, 128, 192]], np.uint8), "L")
    grey.info["icc_profile"] = g18
    expected = ImageCms.profileToProfile(grey, ImageCms.ImageCmsProfile(io.BytesIO(g18)),
                                         ImageCms.createProfile("sRGB"), outputMode="RGB")
    seen = to_array(grey, "RGB")
    assert (seen == np.asarray(expected)).all() and seen[0, 0, 0] > 38
    assert to_array(grey, "L")[0].tolist() == [32, 64, 128, 192]
    clear = grey.convert("LA")
    clear.putalpha(Image.fromarray(np.array([[0, 255, 255, 255]], np.uint8)))
    clear.info["icc_profile"] = g18
    assert (to_array(clear, "RGBA")[..., :3] == seen).all() and to_array(clear, "RGBA")[0, 0, 3] == 0
