"""No-reference checks: NIQE (pinned to BasicSR's port of the published MATLAB code) and check_output's drift,
clipping and flags, on seeded made-up images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.color import lab2rgb

from pixelmill.tasks.core.colour import srgb_to_lab
from pixelmill.tasks.inference.checks import Thresholds, check_output, niqe, reduce_to

COLUMNS = {"drift_mean", "drift_p95", "niqe_input", "niqe_output", "clipped", "flag", "flag_reason"}


def pink(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w) uint8 1/f noise: the power spectrum of natural images, so NIQE has statistics to fit."""
    rng = np.random.default_rng(seed)
    f = np.fft.rfft2(rng.standard_normal((h, w)))
    f /= np.maximum(np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]), 1 / max(h, w))
    img = np.fft.irfft2(f, s=(h, w))
    return np.clip(np.rint(128 + 40 * (img - img.mean()) / img.std()), 0, 255).astype(np.uint8)


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8: a 1/f luminance texture under slowly varying colours, nothing at 0 or 255."""
    grey = pink(h, w, seed).astype(float)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    tint = np.stack([40 * np.sin(3 * x + 1), 25 * np.cos(4 * y), -35 * np.sin(2 * (x + y))], axis=-1)
    return np.clip(np.rint(0.7 * grey[..., None] + 38 + tint), 1, 254).astype(np.uint8)


def degrade(grey: np.ndarray) -> np.ndarray:
    noisy = ndimage.gaussian_filter(grey.astype(float), 3) + np.random.default_rng(5).normal(0, 8, grey.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return photo(240, 320, seed=1)


# ------------------------------------------------------------------ NIQE

def test_niqe_agrees_with_basicsr():
    """BasicSR 1.4.2's calculate_niqe (its port of the authors' MATLAB code) gives 7.593921 and 15.378939 here."""
    texture = pink(256, 256, seed=0)
    assert niqe(texture) == pytest.approx(7.593921, abs=0.01)
    assert niqe(degrade(texture)) == pytest.approx(15.378939, abs=0.01)


def test_niqe_scales_and_types():
    texture = pink(256, 256, seed=0)
    reference = niqe(texture)
    assert niqe(texture.astype(np.uint16) * 257) == pytest.approx(reference, abs=1e-6)
    assert niqe(texture.astype(np.float64)) == pytest.approx(reference, abs=1e-6)
    assert math.isfinite(niqe(pink(200, 300, seed=2)))


def test_niqe_is_higher_for_a_blurred_noisy_image():
    texture = pink(256, 256, seed=1)
    assert niqe(degrade(texture)) > niqe(texture) + 3


def test_niqe_needs_two_blocks_per_side():
    assert math.isnan(niqe(pink(191, 400, seed=0)))
    assert math.isnan(niqe(pink(400, 150, seed=0)))
    assert math.isfinite(niqe(pink(192, 192, seed=0)))
    with pytest.raises(ValueError):
        niqe(np.zeros((256, 256, 3), np.uint8))


# ------------------------------------------------------------------ check_output

def test_identity_is_not_flagged(image):
    row = check_output(image, image)
    assert set(row) == COLUMNS
    assert row["drift_mean"] == 0 and row["drift_p95"] == 0 and row["clipped"] == 0
    assert row["niqe_input"] == row["niqe_output"] and math.isfinite(row["niqe_input"])
    assert row["flag"] is False and row["flag_reason"] is None
    # the same picture at 16 bits is the same picture
    same = check_output(image, image.astype(np.uint16) * 257)
    assert same["drift_mean"] == 0 and same["flag"] is False


def test_super_resolution_output_is_reduced_to_the_input_size(image):
    h, w, _ = image.shape
    for size in ((2 * w, 2 * h), (3 * w // 2, 3 * h // 2)):  # an integer scale (box) and 1.5 (area weights)
        bigger = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
        row = check_output(image, bigger)
        assert row["drift_mean"] < 0.5 and row["drift_p95"] < 1.5
        assert row["niqe_output"] - row["niqe_input"] < Thresholds().niqe_worse
        assert row["flag"] is False, row["flag_reason"]


def test_colour_shift_is_flagged(image):
    redder = np.clip(image.astype(int) + [15, 0, 0], 0, 255).astype(np.uint8)
    row = check_output(image, redder)
    assert row["flag"] is True
    assert row["flag_reason"].startswith("drift: mean dE2000 ")
    assert row["drift_mean"] > Thresholds().drift_mean
    # a looser threshold lets it through
    assert check_output(image, redder, thresholds=Thresholds(drift_mean=20, drift_p95=40))["flag"] is False


def test_clipping_is_flagged(image):
    harsh = np.clip((image.astype(float) - 128) * 2.5 + 128, 0, 255).astype(np.uint8)
    row = check_output(image, harsh)
    assert row["clipped"] > 0.1
    assert row["flag"] is True and "clipped: " in row["flag_reason"]
    assert "; " in row["flag_reason"]  # the colours moved too: both reasons, joined


def test_blurred_output_is_flagged_by_niqe():
    texture = np.repeat(pink(256, 256, seed=3)[..., None], 3, axis=2)
    blurred = np.repeat(degrade(texture[..., 0])[..., None], 3, axis=2)
    row = check_output(texture, blurred)
    assert row["niqe_output"] - row["niqe_input"] > Thresholds().niqe_worse
    assert row["flag"] is True and "niqe: " in row["flag_reason"]


def test_colourisation_is_judged_on_lightness_only(image):
    grey = pink(240, 320, seed=4)
    lightness = srgb_to_lab(np.repeat(grey[..., None], 3, axis=2))[..., 0]
    y, x = np.mgrid[0:240, 0:320]
    lab = np.stack([lightness, 25 * np.sin(x / 40), 30 * np.cos(y / 50)], axis=-1)
    colourised = np.clip(np.rint(lab2rgb(lab) * 255), 0, 255).astype(np.uint8)
    row = check_output(grey, colourised, colour=False)
    assert row["drift_mean"] < 1 and row["drift_p95"] < 2
    assert row["flag_reason"] is None or "drift" not in row["flag_reason"]
    judged_on_colour = check_output(grey, colourised)
    assert judged_on_colour["flag"] is True and "drift: mean dE2000" in judged_on_colour["flag_reason"]
    darker = np.clip(colourised.astype(int) - 30, 0, 255).astype(np.uint8)
    assert "drift: mean |dL*|" in check_output(grey, darker, colour=False)["flag_reason"]


def test_small_images_get_nan_niqe_and_no_niqe_flag():
    tiny = photo(60, 80, seed=6)
    row = check_output(tiny, np.asarray(Image.fromarray(tiny).resize((160, 120), Image.BICUBIC)))
    assert math.isnan(row["niqe_input"]) and math.isnan(row["niqe_output"])
    assert row["flag"] is False


def test_reduce_to_averages_areas():
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (9, 12, 3)).astype(np.uint8)
    # 9 x 12 -> 2 x 3: each output pixel covers 4.5 x 4 input pixels, half-pixels weighted by half
    weights_h = np.zeros((2, 9))
    weights_h[0, :4], weights_h[0, 4], weights_h[1, 4], weights_h[1, 5:] = 1, 0.5, 0.5, 1
    weights_w = np.kron(np.eye(3), np.ones(4))
    expected = np.einsum("ij,jkc,lk->ilc", weights_h / 4.5, pixels.astype(float), weights_w / 4) * 257
    out = reduce_to(pixels, 2, 3)
    assert out.dtype == np.uint16
    assert np.abs(out - expected).max() <= 0.5 + 1e-6
    box = reduce_to(pixels[:8], 4, 6)  # a factor of 2: the 2x2 mean
    expected = pixels[:8].reshape(4, 2, 6, 2, 3).astype(float).mean(axis=(1, 3)) * 257
    assert np.abs(box - expected).max() <= 0.5 + 1e-6
