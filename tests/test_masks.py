"""Mask shaping and compositing."""

import numpy as np

from backend.engine import masks
from shared.compose import composite
from shared.rules import reach as mask_margin


def square_mask(size=64, lo=24, hi=40):
    mask = np.zeros((size, size), np.uint8)
    mask[lo:hi, lo:hi] = 255
    return mask


def test_grow_dilates_and_keeps_soft_values():
    mask = square_mask()
    grown = masks.grow(mask, 4)
    assert grown[20, 20] == 255 and grown[19, 19] == 0
    soft = (mask // 2)
    assert masks.grow(soft, 2).max() == 127


def test_feather_keeps_the_mask_and_fades_outward():
    mask = square_mask()
    alpha = masks.shape_mask(mask, 0, 8)
    assert (alpha[mask == 255] == 255).all()
    assert 0 < alpha[32, 20] < 255  # just outside: partly blended
    assert alpha[32, 2] == 0
    reach = mask_margin(0, 8)
    assert (alpha[:, :24 - reach] == 0).all()


def test_layer_and_composite_leave_outside_pixels_untouched():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    alpha = masks.shape_mask(square_mask(), 2, 4)
    layer = masks.make_layer(generated, original, alpha)
    assert (layer[..., 3] == alpha).all()
    assert (layer[alpha == 0][:, :3] == original[alpha == 0]).all()
    canvas = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    canvas[10:74, 20:84] = original
    out = composite(canvas, layer, (20, 10))
    untouched = np.ones((100, 120), bool)
    untouched[10:74, 20:84] = alpha == 0
    assert (out[untouched] == canvas[untouched]).all()
    assert (out[10:74, 20:84][alpha == 255] == generated[alpha == 255]).all()



def test_composite_of_a_large_picture_works_in_bands_with_the_same_bytes(monkeypatch):
    """`easel run img2img` on a 4096 x 3072 photo peaked at 820 MB in the client, all of it this composite's
    integer temporaries of the whole picture; it now works a band of rows at a time."""
    import tracemalloc

    from shared import compose

    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (1500, 2000, 4), dtype=np.uint8)
    base[..., 3] = rng.choice([0, 128, 255], (1500, 2000))
    layer = rng.integers(0, 256, (1500, 1900, 4), dtype=np.uint8)  # runs past the picture's bottom and right
    tracemalloc.start()
    try:
        banded = composite(base, layer, (150, 40))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * base.nbytes, "the result and a band's temporaries, not 70 bytes a pixel"
    monkeypatch.setattr(compose, "BAND", 10**6)  # the whole picture at once, as before
    assert (banded == composite(base, layer, (150, 40))).all()
    assert (banded[:40] == base[:40]).all() and (banded[:, :150] == base[:, :150]).all()

def test_a_repaint_that_got_the_light_wrong_meets_the_picture_at_the_edge_and_keeps_its_middle():
    y, x = np.mgrid[0:160, 0:160]
    original = np.dstack([x, y, (x + y) // 2]).astype(np.uint8)  # a gentle gradient, ~1 level a pixel
    mask = square_mask(160, 40, 120)
    alpha = masks.shape_mask(mask, 8, 16)
    repaint = np.clip(original.astype(int) + 24, 0, 255).astype(np.uint8)  # 24 levels too light
    matched = masks.match_light(repaint, original, alpha, 16, keep=8)
    ramp = (alpha > 0) & (alpha < 255)
    before = np.abs(repaint.astype(int) - original)[ramp].mean()
    after = np.abs(matched.astype(int) - original)[ramp].mean()
    assert before == 24 and after < 2, "over the ramp the repaint now meets the picture"
    assert (matched[70:90, 70:90] == repaint[70:90, 70:90]).all(), "the middle of the edit is its own"
    assert (matched[alpha == 0] == repaint[alpha == 0]).all()
    layer = masks.make_layer(matched, original, alpha)
    assert (layer[alpha == 0][:, :3] == original[alpha == 0]).all(), "outside the alpha: the input's bytes"
    out = composite(original, layer, (0, 0))

    def slope(picture):
        rows, cols = np.gradient(picture[..., :3].astype(float), axis=(0, 1))
        return np.hypot(rows, cols).mean(axis=2)[ramp].mean()
    assert slope(out) <= 1.3 * slope(original), "no seam: across the ramp the composite is as smooth as the picture"
