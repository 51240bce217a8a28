"""No-reference checks of a model's output against its input: nobody opens a million files, so an output that looks
wrong is flagged for a person.

    check_output(input, output)   the predictions-row columns: colour drift (CIEDE2000 mean and 95th percentile),
                                  NIQE of input and output, extra clipping, flag and flag_reason
    niqe(grey)                    NIQE (lower is more natural)

NIQE is Mittal, Soundararajan & Bovik (2013), "Making a 'completely blind' image quality analyzer", IEEE Signal
Processing Letters 20(3). niqe_pris_params.npz is the authors' published model (a multivariate Gaussian of 36 natural
scene statistics fitted on their 125 pristine images, with the 7x7 Gaussian window), as converted from the MATLAB
release's modelparameters.mat by BasicSR 1.4.2 (basicsr/metrics/niqe_pris_params.npz, Apache-2.0,
https://github.com/XPixelGroup/BasicSR). The procedure follows BasicSR's port of the MATLAB code
(basicsr/metrics/niqe.py): 96x96 blocks without overlap, two scales, MATLAB's antialiased bicubic imresize by 1/2,
luma as MATLAB's rgb2ycbcr Y, rounded. It is vectorised here (each AGGD fit over all blocks at once, the argmin over
the shape grid a binary search, the Gaussian window applied as two 1D passes, the resize as two banded matrices),
6-7x faster than BasicSR, and its scores agree with BasicSR's calculate_niqe within 0.003 (mostly 1e-5): float32
sums in another order move a block's shape estimate by one step of the 0.001 grid now and then.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage, sparse
from scipy.special import gamma

from pixelmill.tasks.core.colour import srgb_delta_e2000, srgb_to_lightness

NIQE_PARAMS = Path(__file__).with_name("niqe_pris_params.npz")
NIQE_BLOCK = 96  # the published model's block size: features are only comparable at this size
# Colour drift compares the means of blocks this size, not single pixels: sharpening and denoising move pixel values
# along edges and in texture (per pixel, a gentle unsharp mask gave a CIEDE2000 mean up to 2.3 and p95 up to 7.4, a
# 3x3 median up to 4.8 / 18.0, on a par with +15 on one channel: 4.6-7.9 / 7.5-10.5), while a block's mean colour
# stays; a colour shift moves every block alike. At 8 the two separate (numbers beside Thresholds).
DRIFT_BLOCK = 8

# --- NIQE ------------------------------------------------------------------------------------------------------------


@functools.cache
def _model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu (36,), cov (36, 36), 1D Gaussian (7,)); the 7x7 window is separable (the outer product of its row sums
    equals it to 3e-17), so it is applied as two 1D passes."""
    with np.load(NIQE_PARAMS) as params:
        window = params["gaussian_window"]
        return params["mu_pris_param"][0], params["cov_pris_param"], window.sum(axis=1)


@functools.cache
def _aggd_grid() -> tuple[np.ndarray, np.ndarray]:
    """The reference's shape grid (0.2 to 10 by 0.001) and its r(gamma), which increases strictly with gamma: the
    reference's argmin over the grid is then a binary search."""
    gam = np.arange(0.2, 10.001, 0.001)
    r = np.square(gamma(2 / gam)) / (gamma(1 / gam) * gamma(3 / gam))
    return gam, r


def _aggd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalised Gaussian fits (alpha, beta_l, beta_r) of each row of x (blocks, pixels) at once.

    As the reference: the left and right spreads from the strictly negative and strictly positive values; a block
    with no value on one side gets NaN spreads (and alpha 0.2, argmin's answer over NaN), as it does there. Row sums
    are float32 matrix-vector products (BLAS; the reference's np.mean is float32 too); counts are exact in float32.
    """
    n = x.shape[1]
    ones = np.ones(n, np.float32)
    neg = np.minimum(x, 0)
    left_sq = np.einsum("ij,ij->i", neg, neg).astype(np.float64)
    total_sq = np.einsum("ij,ij->i", x, x).astype(np.float64)
    n_left, n_right = _count_rows(x < 0), _count_rows(x > 0)
    abs_sum = (x @ ones).astype(np.float64) - 2 * (neg @ ones).astype(np.float64)  # |x| = x - 2 min(x, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        left_std = np.sqrt(left_sq / n_left)
        right_std = np.sqrt((total_sq - left_sq) / n_right)
        gamma_hat = left_std / right_std
        r_hat = np.square(abs_sum / n) / (total_sq / n)
        r_norm = r_hat * (gamma_hat ** 3 + 1) * (gamma_hat + 1) / np.square(gamma_hat ** 2 + 1)
    gam, r = _aggd_grid()
    hi = np.clip(np.searchsorted(r, r_norm), 1, len(r) - 1)
    lo = hi - 1
    index = np.where(np.square(r[lo] - r_norm) <= np.square(r[hi] - r_norm), lo, hi)  # ties: the first, as argmin
    index[np.isnan(r_norm)] = 0
    alpha = gam[index]
    spread = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left_std * spread, right_std * spread


def _count_rows(mask: np.ndarray) -> np.ndarray:
    """True values per row of a 2D bool array, by popcount of the packed bits (4x faster than a sum of bools)."""
    if not hasattr(np, "bitwise_count"):  # numpy < 2.0
        return mask.sum(axis=1, dtype=np.int64).astype(np.float64)
    packed = np.packbits(mask, axis=1)
    if packed.shape[1] % 8 == 0:
        packed = packed.view(np.uint64)
    return np.bitwise_count(packed).sum(axis=1, dtype=np.int64).astype(np.float64)


def _wrap(shift: int, size: int) -> list[tuple[slice, slice]]:
    """(destination, source) slices along one axis of np.roll(a, shift) for shift in {-1, 0, 1}."""
    if shift == 0:
        return [(slice(None), slice(None))]
    if shift == 1:
        return [(slice(1, size), slice(0, size - 1)), (slice(0, 1), slice(size - 1, size))]
    return [(slice(0, size - 1), slice(1, size)), (slice(size - 1, size), slice(0, 1))]


def _neighbour_product(blocks: np.ndarray, shift: tuple[int, int], out: np.ndarray) -> np.ndarray:
    """blocks * np.roll(blocks, shift, axis=(1, 2)), without the rolled copy."""
    size = blocks.shape[1]
    for dy, sy in _wrap(shift[0], size):
        for dx, sx in _wrap(shift[1], size):
            np.multiply(blocks[:, dy, dx], blocks[:, sy, sx], out=out[:, dy, dx])
    return out


def _block_features(img: np.ndarray, block: int) -> np.ndarray:
    """(blocks, 18) features of one scale: the MSCN coefficients' AGGD fit and those of their products with the
    four neighbours (horizontal, vertical, two diagonals; circular within a block, as np.roll in the reference).
    Each fit covers all blocks at once; one fit at a time keeps its data in cache (all five at once was slower)."""
    _, _, kernel = _model()
    mu = ndimage.correlate1d(ndimage.correlate1d(img, kernel, 0, mode="nearest"), kernel, 1, mode="nearest")
    sq = np.square(img)
    mu_sq = ndimage.correlate1d(ndimage.correlate1d(sq, kernel, 0, mode="nearest"), kernel, 1, mode="nearest")
    sigma = np.sqrt(np.abs(mu_sq - np.square(mu)))
    mscn = (img - mu) / (sigma + 1)
    h, w = mscn.shape
    n = (h // block) * (w // block)
    blocks = mscn.reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3).reshape(n, block, block)
    alpha, beta_l, beta_r = _aggd(blocks.reshape(n, -1))
    feats = [alpha, (beta_l + beta_r) / 2]
    product = np.empty_like(blocks)
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        alpha, beta_l, beta_r = _aggd(_neighbour_product(blocks, shift, product).reshape(n, -1))
        mean = (beta_r - beta_l) * (gamma(2 / alpha) / gamma(1 / alpha))  # Eq. 8 of the paper
        feats += [alpha, mean, beta_l, beta_r]
    return np.stack(feats, axis=1)


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return ((1.5 * ax ** 3 - 2.5 * ax ** 2 + 1) * (ax <= 1)
            + (-0.5 * ax ** 3 + 2.5 * ax ** 2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@functools.lru_cache(maxsize=64)
def _resize_matrix(n_in: int, scale: float) -> sparse.csr_matrix:
    """MATLAB imresize's bicubic weights (antialiased when shrinking), as BasicSR's calculate_weights_indices makes
    them, with the symmetric padding folded back onto the image: (n_out, n_in)."""
    n_out = math.ceil(n_in * scale)
    width = 4 / scale if scale < 1 else 4.0
    u = np.arange(1, n_out + 1) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    p = math.ceil(width) + 2
    indices = left[:, None] + np.arange(p)[None, :]
    distance = u[:, None] - indices
    weights = scale * _cubic(distance * scale) if scale < 1 else _cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    zeros = np.sum(weights == 0, axis=0)  # the reference drops an edge column holding any zero weight
    keep = slice(1 if zeros[0] else 0, p - 1 if zeros[-1] else p)
    indices, weights = indices[:, keep], weights[:, keep]
    j = indices.astype(np.int64) - 1  # 1-based (MATLAB) -> 0-based
    j = np.where(j < 0, -j - 1, np.where(j >= n_in, 2 * n_in - 1 - j, j))  # symmetric padding
    rows = np.repeat(np.arange(n_out), j.shape[1])
    return sparse.csr_matrix((weights.ravel(), (rows, j.ravel())), shape=(n_out, n_in), dtype=np.float32)


def imresize_half(img: np.ndarray) -> np.ndarray:
    """MATLAB's imresize(img, 0.5) (bicubic, antialiased) of a 2D float32 image, unrounded."""
    rows = _resize_matrix(img.shape[0], 0.5) @ img
    return np.ascontiguousarray((_resize_matrix(img.shape[1], 0.5) @ rows.T).T, dtype=np.float32)


def _to_255(grey: np.ndarray) -> np.ndarray:
    if grey.dtype == np.uint16:
        return grey.astype(np.float32) * np.float32(255 / 65535)
    return grey.astype(np.float32)


def niqe(grey: np.ndarray, crop_border: int = 0) -> float:
    """NIQE of an (H, W) image (uint8; uint16, scaled to [0, 255]; or float in [0, 255]) with the published model;
    lower is more natural (20 photographs of the shared data set scored 1.7-4.4; blurred by 2 px, 7.3-9.2).

    Values are rounded to integers first, as the reference does (the model was fitted on 8-bit images). The image is
    cropped to whole 96x96 blocks from its top left; NaN when it holds fewer than 2 blocks per side (under 192 pixels
    in either direction): the 36x36 covariance of the image's block features is then estimated from too few blocks
    (the reference would return NaN or a number of no meaning). `crop_border` pixels are dropped on every side
    first, as the reference's calculate_niqe does.
    """
    if grey.ndim != 2:
        raise ValueError(f"niqe needs an (H, W) image, got shape {grey.shape}")
    img = np.round(_to_255(grey))
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    nh, nw = img.shape[0] // NIQE_BLOCK, img.shape[1] // NIQE_BLOCK
    if nh < 2 or nw < 2:
        return math.nan
    img = np.ascontiguousarray(img[:nh * NIQE_BLOCK, :nw * NIQE_BLOCK])
    feats = np.concatenate([_block_features(img, NIQE_BLOCK),
                            _block_features(imresize_half(img / np.float32(255)) * np.float32(255), NIQE_BLOCK // 2)],
                           axis=1)
    mu_pris, cov_pris, _ = _model()
    with np.errstate(invalid="ignore"):
        mu = np.nanmean(feats, axis=0)
    complete = feats[~np.isnan(feats).any(axis=1)]
    if len(complete) < 2:
        return math.nan  # no covariance: a flat image has no natural statistics to compare
    cov = np.cov(complete, rowvar=False)
    d = mu_pris - mu
    return float(np.sqrt(d @ np.linalg.pinv((cov_pris + cov) / 2) @ d))


# --- check_output ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """Defaults measured on 20 photographs of /work/shared/data/restoration (10 CBSD68, 10 CSun_Hays80), as
    min / median / max over the photos, drift on 8x8 block means:

      identity                                  drift 0 / p95 0, clipped 0, NIQE +0
      gentle restoration: unsharp mask r1 50%, Gaussian 0.7 denoise, 3x3 median, JPEG q75, bicubic x2, Lanczos x2 +
        unsharp mask r2 80%: drift mean <= 1.02, p95 <= 2.40, extra clipped <= 8.8% (sharpening overshoot),
        NIQE +2.82 at most (3x3 median); a strong unsharp mask r2 100%: mean <= 1.67, p95 <= 4.25, clipped <= 20%
      colour shifts: mean / p95 minima over the photos: hue +20 deg (in Lab) 2.66 / 5.95 (+10 deg: 1.26 / 2.94),
        R+15 4.70 / 7.37, G+15 6.97, B+15 4.01, orange tint 10% 4.20 (5%: 2.13), blue tint 10% 4.54, sepia 15% 3.04,
        R+5 1.52 / 2.35 (median 2.09)
      degradations, NIQE output - input: Gaussian blur 2 px 3.42 / 5.42 / 6.22, noise sigma 20 2.06 / 4.71 / 7.34,
        JPEG q10 0.50 / 3.10 / 4.70; contrast x1.3: extra clipped 0.8% / 21% / 50%

    With these defaults: identity and the gentle restorations 0/20 flagged (the strong unsharp mask 2/20, clipping);
    hue +20, +15 on any channel, every tint 20/20 (hue +10 17/20, R+5 12/20, hue +5 0/20); blur 2 px 20/20 (NIQE).
    """

    drift_mean: float = 2.0  # CIEDE2000 mean above which an output's colours moved too far
    drift_p95: float = 5.0
    clipped: float = 0.10  # extra clipped fraction (output's minus input's) above which it is flagged
    niqe_worse: float = 3.0  # output NIQE minus input NIQE above which it is flagged (NIQE lower = better)


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype not in (np.uint8, np.uint16) or not (pixels.ndim == 2 or (pixels.ndim == 3
                                                                             and pixels.shape[2] == 3)):
        raise ValueError(f"need (H, W) or (H, W, 3) uint8/uint16 pixels, got {pixels.shape} {pixels.dtype}")
    return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels


@functools.lru_cache(maxsize=64)
def _area_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """(n_out, n_in) weights of area averaging: each output pixel the mean of the input span it covers."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    rows, cols, vals = [], [], []
    for i in range(n_out):
        lo, hi = edges[i], edges[i + 1]
        for j in range(int(lo), min(math.ceil(hi), n_in)):
            overlap = min(hi, j + 1) - max(lo, j)
            if overlap > 0:
                rows.append(i), cols.append(j), vals.append(overlap / (hi - lo))
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in), dtype=np.float32)


def reduce_to(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) uint8/uint16 -> (height, width, 3) uint16 by area averaging (a box filter for an integer factor).
    uint16, not float: the colour tables take it directly, and 1/65535 is far below any difference we measure."""
    h, w, _ = pixels.shape
    if (h, w) == (height, width):
        return pixels
    top = np.iinfo(pixels.dtype).max
    if h % height == 0 and w % width == 0 and h // height == w // width:
        return _box_mean(pixels, h // height)
    rows = _area_matrix(h, height) @ pixels.reshape(h, w * 3).astype(np.float32)
    cols = _area_matrix(w, width) @ rows.reshape(height, w, 3).transpose(1, 0, 2).reshape(w, height * 3)
    mean = cols.reshape(width, height, 3).transpose(1, 0, 2) * np.float32(65535 / top)
    return np.rint(mean).astype(np.uint16)


def _box_mean(pixels: np.ndarray, s: int) -> np.ndarray:
    """Means of s x s blocks, in integers: sums of strided slices (a float reduction over the small axes took 13 ms
    for 1 MP, this 2 ms), then the sum -> 16-bit mean through a table (uint8) or a rounded division (uint16)."""
    top = np.iinfo(pixels.dtype).max
    acc = np.uint16 if s * s * top <= 65535 else np.uint64 if s * s * top > 2 ** 32 - 1 else np.uint32
    rows = pixels[0::s].astype(acc)
    for i in range(1, s):
        rows += pixels[i::s]
    rows = rows.reshape(rows.shape[0], -1, s, 3)
    total = rows[:, :, 0].copy()
    for j in range(1, s):
        total += rows[:, :, j]
    n = s * s
    if pixels.dtype == np.uint8:
        table = np.floor(np.arange(n * top + 1) * (65535 / (n * top)) + 0.5).astype(np.uint16)  # halves up, as
        return table[total]  # the uint16 branch: one picture at 8 or 16 bits reduces to the same values
    total += n // 2
    total //= n
    return total.astype(np.uint16)


def luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8/uint16 -> (H, W) float32 Y of MATLAB's rgb2ycbcr (BT.601, [16, 235]) on a [0, 255] scale."""
    k = np.array([65.481, 128.553, 24.966], np.float32) / np.float32(np.iinfo(rgb.dtype).max)
    y = rgb[..., 0] * k[0]
    y += rgb[..., 1] * k[1]
    y += rgb[..., 2] * k[2]
    y += np.float32(16)
    return y


def clipped_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels with a channel at 0 or full scale. v - 1 (wrapping) is >= top - 1 exactly for those."""
    top = np.iinfo(rgb.dtype).max
    shifted = rgb - rgb.dtype.type(1)  # 0 -> top: both extremes land on the top two codes
    peak = np.maximum(np.maximum(shifted[..., 0], shifted[..., 1]), shifted[..., 2])
    return np.count_nonzero(peak >= top - 1) / peak.size


def _p95(values: np.ndarray) -> float:
    """np.percentile(values, 95) (linear interpolation) by a partition: 8x faster on a megapixel."""
    flat = values.ravel()
    k = 0.95 * (len(flat) - 1)
    lo = int(k)
    hi = min(lo + 1, len(flat) - 1)
    part = np.partition(flat, (lo, hi))
    return float(part[lo] + (k - lo) * (part[hi] - part[lo]))


def drift(src: np.ndarray, reduced: np.ndarray, colour: bool = True) -> np.ndarray:
    """Per-block colour difference of two (H, W, 3) sRGB images of one size: CIEDE2000 (or |dL*| when not `colour`)
    between the means of DRIFT_BLOCK x DRIFT_BLOCK blocks (whole blocks from the top left; per pixel when the image is
    smaller than a block)."""
    h, w, _ = src.shape
    k = DRIFT_BLOCK if min(h, w) >= DRIFT_BLOCK else 1
    bh, bw = h // k, w // k
    a = reduce_to(src[:bh * k, :bw * k], bh, bw)
    b = reduce_to(reduced[:bh * k, :bw * k], bh, bw)
    if colour:
        return srgb_delta_e2000(a, b)
    return np.abs(srgb_to_lightness(a) - srgb_to_lightness(b))


def check_output(input_pixels: np.ndarray, output_pixels: np.ndarray, colour: bool = True,
                 thresholds: Thresholds = Thresholds()) -> dict:
    """Checks of one output against its input, both in the sRGB working space: (H, W, 3) or (H, W) (grey:
    replicated), uint8 or uint16, dtypes may differ; the output may be `scale` x larger and is first reduced to the
    input's size by area averaging.

    Returns the predictions-row columns:
      drift_mean, drift_p95   CIEDE2000 between the input's and the output's colours over all pixels, as means of
                              8x8 blocks (see DRIFT_BLOCK); with colour=False (the output is meant to differ in
                              colour, as a colourisation's) |dL*| only
      niqe_input, niqe_output NIQE at the input's size, on luma (NaN for images under 192 pixels a side)
      clipped                 fraction of output pixels at 0 or full scale in any channel, minus the input's, >= 0
      flag, flag_reason       bool; None or the reasons, e.g. "drift: mean dE2000 7.3 > 2.5", joined by "; "
    """
    src = _as_rgb(input_pixels)
    out = _as_rgb(output_pixels)
    reduced = reduce_to(out, *src.shape[:2])
    d = drift(src, reduced, colour)
    row = {
        "drift_mean": float(d.mean(dtype=np.float64)),
        "drift_p95": _p95(d),
        "niqe_input": niqe(luma(src)),
        "niqe_output": niqe(luma(reduced)),
        "clipped": max(0.0, clipped_fraction(out) - clipped_fraction(src)),
    }
    reasons = _reasons(row, colour, thresholds)
    return {**row, "flag": bool(reasons), "flag_reason": "; ".join(reasons) or None}


def _reasons(row: dict, colour: bool, t: Thresholds) -> list[str]:
    measure = "dE2000" if colour else "|dL*|"
    reasons = []
    if row["drift_mean"] > t.drift_mean:
        reasons.append(f"drift: mean {measure} {row['drift_mean']:.1f} > {t.drift_mean:g}")
    if row["drift_p95"] > t.drift_p95:
        reasons.append(f"drift: p95 {measure} {row['drift_p95']:.1f} > {t.drift_p95:g}")
    if row["clipped"] > t.clipped:
        reasons.append(f"clipped: {row['clipped']:.1%} more pixels at 0 or full scale > {t.clipped:.0%}")
    worse = row["niqe_output"] - row["niqe_input"]  # NaN (too small to judge) compares False
    if worse > t.niqe_worse:
        reasons.append(f"niqe: {row['niqe_output']:.1f} vs {row['niqe_input']:.1f} for the input "
                       f"(+{worse:.1f} > {t.niqe_worse:g})")
    return reasons
