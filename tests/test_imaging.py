"""Decoding pictures the way painters' files come: 16-bit, palettes, masks with transparency."""

import numpy as np
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
