"""PSNR / SSIM on known values, BasicSR conventions, and agreement with skimage and the torch version."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from pixelmill.tasks.training.metrics import modcrop, psnr, psnr_torch, rgb_to_y, ssim


@pytest.fixture
def img():
    rng = np.random.default_rng(0)
    # smooth content plus texture, so SSIM is meaningful
    yy, xx = np.mgrid[0:48, 0:64]
    base = 128 + 60 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 5.0)[..., None] * np.array([1.0, 0.8, 0.6])
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def test_psnr_known_mse(img):
    a = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(a, a + 5) == pytest.approx(20 * math.log10(255 / 5), abs=1e-12)
    assert psnr(a, a) == float("inf")
    assert psnr(img, img) == float("inf")


def test_psnr_crop_border_removes_border_differences(img):
    b = img.copy()
    b[:2] = 0
    b[:, -2:] = 255
    assert psnr(img, b) < 40
    assert psnr(img, b, crop_border=2) == float("inf")
    assert psnr(img, b, crop_border=2, y_channel=True) == float("inf")
    with pytest.raises(ValueError, match="crop_border"):
        psnr(img, b, crop_border=24)


def test_rgb_to_y_white_black_and_range(img):
    assert rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235, abs=1e-9)
    assert rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16, abs=1e-12)
    y = rgb_to_y(img)
    assert y.dtype == np.float64 and y.shape == img.shape[:2] and y.min() >= 16 and y.max() <= 235
    assert rgb_to_y(img.astype(np.float32)) == pytest.approx(y)


def test_y_channel_psnr_uses_luma():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[..., 1] += 10  # green only: Y changes by 10 * 128.553 / 255
    dy = 10 * 128.553 / 255
    assert psnr(a, b, y_channel=True) == pytest.approx(20 * math.log10(255 / dy), abs=1e-9)


def test_ssim_identical_is_one(img):
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    assert ssim(img, img, y_channel=True, crop_border=4) == pytest.approx(1.0, abs=1e-12)


def test_ssim_decreases_with_noise(img):
    rng = np.random.default_rng(1)
    values = [ssim(img, np.clip(img + rng.normal(0, s, img.shape), 0, 255).astype(np.uint8)) for s in (2, 10, 30)]
    assert 1 > values[0] > values[1] > values[2] > 0


def test_ssim_matches_skimage_on_gray(img):
    rng = np.random.default_rng(2)
    a = rgb_to_y(img)
    b = np.clip(a + rng.normal(0, 8, a.shape), 0, 255)
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    # skimage filters with reflection but averages only the interior 5 px in from every side (its `crop(S, pad)`),
    # which is exactly BasicSR's 'valid' region: the two agree to rounding.
    assert ssim(a, b) == pytest.approx(ref, abs=1e-10)


def test_ssim_rgb_is_channel_mean(img):
    b = np.clip(img.astype(int) + 7 * (np.arange(img.shape[1]) % 3)[:, None], 0, 255).astype(np.uint8)
    per_channel = [ssim(img[..., c], b[..., c]) for c in range(3)]
    assert ssim(img, b) == pytest.approx(np.mean(per_channel), abs=1e-15)


def test_modcrop():
    x = np.zeros((50, 35, 3), np.uint8)
    assert modcrop(x, 4).shape == (48, 32, 3)
    assert modcrop(x[..., 0], 5).shape == (50, 35)


@pytest.mark.parametrize("y_channel", [True, False])
def test_psnr_torch_matches_numpy(img, y_channel):
    rng = np.random.default_rng(3)
    targets = np.stack([img, img[::-1]])  # (2, H, W, 3) uint8
    preds = np.clip(targets / 255 + rng.normal(0, 0.03, targets.shape), 0, 1)  # float predictions in [0, 1]
    t = torch.from_numpy(targets).permute(0, 3, 1, 2).float() / 255
    p = torch.from_numpy(preds).permute(0, 3, 1, 2).float()
    # float path: the same float32 values, scaled by 255, in numpy
    got = psnr_torch(p, t, crop_border=4, y_channel=y_channel)
    p255, t255 = p.permute(0, 2, 3, 1).double().numpy() * 255, t.permute(0, 2, 3, 1).double().numpy() * 255
    want = [psnr(p255[i], t255[i], crop_border=4, y_channel=y_channel) for i in range(2)]
    assert got.shape == (2,) and got.tolist() == pytest.approx(want, abs=1e-4)
    # quantized path: as if the prediction were saved as an 8-bit image
    got_q = psnr_torch(p, t, crop_border=4, y_channel=y_channel, quantize=True)
    p8 = np.clip(np.round(p255), 0, 255).astype(np.uint8)
    want_q = [psnr(p8[i], targets[i], crop_border=4, y_channel=y_channel) for i in range(2)]
    assert got_q.tolist() == pytest.approx(want_q, abs=1e-4)
    assert torch.isinf(psnr_torch(t, t)).all()
