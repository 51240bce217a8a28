"""Image quality metrics: PSNR and SSIM per image, on RGB or on the Y channel, the way SR papers report them.

Conventions follow BasicSR (`basicsr/metrics/psnr_ssim.py`), which follows the MATLAB scripts of the
super-resolution literature:
- Images are HxWx3 RGB (or HxW gray), uint8 or float with values in [0, 255].
- `crop_border` pixels are cut from every side first (for xN super-resolution, crop N), then
- `y_channel=True` converts to ITU-R BT.601 luma with MATLAB's `rgb2ycbcr` (values in [16, 235], not rounded).
- PSNR is 10 log10(max_val^2 / MSE) over all remaining pixels and channels; identical images give
  `float('inf')` (callers that average should cap it, e.g. at 100 dB).
- SSIM is Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), C1 = (0.01*255)^2, C2 = (0.03*255)^2,
  on the 'valid' region (the window never leaves the image; a 5-pixel margin has no SSIM value), averaged
  per channel, then over channels. skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255)` gives the same number: it filters with reflection but then
  drops the same 5-pixel margin before averaging.

Pure numpy in float64 (no scipy, no cv2). `psnr_torch` is the batched version for validation while training.

Accumulators (`Mean`, `MetricSet`) collect per-image values over batches the way torchvision's
`ConfusionMatrix`/`MetricLogger` do: `update` per batch, `compute` at the end, `merge` to combine workers.
They keep sums and counts, never means of means, so the result does not depend on how images were batched.
`ConfusionMatrix` does the same for semantic segmentation: pixel counts in, IoU and accuracies out.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# MATLAB rgb2ycbcr, row for Y, applied to R, G, B in [0, 1]; the offset is 16 (of 255).
_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom and right edges so height and width are multiples of `scale` (HxW or HxWxC)."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale, ...]


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """HxWx3 RGB in [0, 255] (uint8 or float) -> HxW float64 luma in [16, 235] (MATLAB rgb2ycbcr, BT.601)."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb_to_y needs an HxWx3 RGB image, got shape {img.shape}")
    return 16.0 + img.astype(np.float64) @ _Y_COEFFS / 255.0


def _prepare(a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, crop the border, optionally convert to Y; float64 HxW or HxWxC."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {a.shape}")
    if crop_border < 0 or 2 * crop_border >= min(a.shape[:2]):
        raise ValueError(f"crop_border {crop_border} does not fit an image of shape {a.shape}")
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border, ...]
        b = b[crop_border:-crop_border, crop_border:-crop_border, ...]
    if y_channel:
        return rgb_to_y(a), rgb_to_y(b)
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, crop_border: int = 0, y_channel: bool = False, max_val: float = 255) -> float:
    """PSNR in dB of two images in [0, 255]; `float('inf')` when they are identical (after cropping)."""
    a, b = _prepare(a, b, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(max_val * max_val / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """cv2.getGaussianKernel(size, sigma): normalised exp(-x^2 / (2 sigma^2)) on x = -(size-1)/2 .. (size-1)/2."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of an HxW float64 image by outer(g, g) (g symmetric, so no flip needed)."""
    k = len(g)
    rows = np.lib.stride_tricks.sliding_window_view(img, k, axis=0) @ g  # (H-k+1, W)
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ g  # (H-k+1, W-k+1)


def _ssim_gray(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two HxW float64 images in [0, 255] (BasicSR's `_ssim`)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = _gaussian_1d(11, 1.5)
    if min(a.shape) < len(g):
        raise ValueError(f"SSIM needs images of at least {len(g)}x{len(g)} pixels (after cropping), got {a.shape}")
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = _filter_valid(a * a, g) - mu_aa
    var_b = _filter_valid(b * b, g) - mu_bb
    cov = _filter_valid(a * b, g) - mu_ab
    ssim_map = ((2 * mu_ab + c1) * (2 * cov + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """Mean SSIM of two images in [0, 255] (BasicSR `calculate_ssim`); RGB: the mean of the channels' SSIM."""
    a, b = _prepare(a, b, crop_border, y_channel)
    if a.ndim == 2:
        return _ssim_gray(a, b)
    return float(np.mean([_ssim_gray(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def psnr_torch(
    pred: torch.Tensor,
    target: torch.Tensor,
    crop_border: int = 0,
    y_channel: bool = True,
    quantize: bool = False,
) -> torch.Tensor:
    """Per-image PSNR in dB, shape (B,), of (B, 3, H, W) tensors with values in [0, 1].

    Same numbers as `psnr(a * 255, b * 255, crop_border, y_channel)` on the HxWx3 arrays. With
    `quantize=True` both tensors are first clamped and rounded to 8-bit levels, as when the prediction is
    saved as an image (then it equals `psnr` on the uint8 images). Identical images give inf.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"expected two (B, C, H, W) tensors of one shape, got {tuple(pred.shape)}, {tuple(target.shape)}"
        )
    x, y = pred.detach().to(torch.float64) * 255.0, target.detach().to(torch.float64) * 255.0
    if quantize:
        x, y = x.clamp(0, 255).round(), y.clamp(0, 255).round()
    if crop_border:
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        if x.shape[1] != 3:
            raise ValueError(f"y_channel needs 3-channel RGB tensors, got {x.shape[1]} channels")
        coeffs = torch.as_tensor(_Y_COEFFS, dtype=torch.float64, device=x.device).view(1, 3, 1, 1) / 255.0
        x = 16.0 + (x * coeffs).sum(dim=1, keepdim=True)
        y = 16.0 + (y * coeffs).sum(dim=1, keepdim=True)
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0**2 / mse)  # mse == 0 -> inf


PSNR_CAP = 100.0  # identical images have infinite PSNR; a cap keeps means finite and comparable


class Mean:
    """The mean of per-item values, exact over any batching; `cap` bounds each value (PSNR's inf)."""

    def __init__(self, cap: float | None = None):
        self.cap, self.total, self.count = cap, 0.0, 0

    def update(self, values, weight: int | None = None) -> None:
        """Add per-item values (a tensor, list or number); a scalar with `weight` stands for that many items."""
        if isinstance(values, torch.Tensor):
            values = values.detach().double().flatten().tolist()
        if not isinstance(values, list | tuple):
            values = [float(values)] * (weight or 1)
        for v in values:
            self.total += min(v, self.cap) if self.cap is not None else v
        self.count += len(values)

    def merge(self, other: Mean) -> Mean:
        self.total, self.count = self.total + other.total, self.count + other.count
        return self

    def compute(self) -> float:
        return self.total / self.count if self.count else math.nan


class MetricSet:
    """Named accumulators: `update(name=values, ...)` per batch, `compute()` -> {name: value}."""

    def __init__(self, **accumulators):
        self.accumulators = accumulators

    def update(self, **values) -> None:
        for name, v in values.items():
            self.accumulators[name].update(v)

    def merge(self, other: MetricSet) -> MetricSet:
        for name, acc in self.accumulators.items():
            acc.merge(other.accumulators[name])
        return self

    def compute(self) -> dict[str, float]:
        """{name: value}; an accumulator that computes several numbers (a confusion matrix) gives
        {name_key: value} for each scalar (per-class lists stay with the accumulator)."""
        out: dict[str, float] = {}
        for name, acc in self.accumulators.items():
            value = acc.compute()
            if isinstance(value, dict):
                out |= {f"{name}_{k}": v for k, v in value.items() if isinstance(v, float | int)}
            else:
                out[name] = value
        return out


class ConfusionMatrix:
    """Pixel counts of (target class, predicted class) for segmentation, like torchvision's reference
    `utils.ConfusionMatrix`: exact over any batching, and `merge` adds another worker's counts.

    Pixels whose target is `ignore_index` are dropped; a prediction of the ignored class (when it is one of
    the model's classes) counts as a miss. `compute()` gives, over the classes but the ignored one:
    - iou_per_class: TP / (TP + FP + FN) per class index (the ignored class NaN); a class absent from both
      the targets and the predictions of everything seen is NaN too, and left out of the mean (mmseg's
      convention; torchvision's would make the mean NaN). A class predicted but never present scores 0.
    - miou: the mean of the non-NaN IoUs. acc_per_class: TP / target pixels (NaN for a class never in the
      targets); mean_class_acc: the mean of the non-NaN ones. global_acc: correct pixels / counted pixels.
    Everything is NaN before any pixel was counted.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        # (C, C) int64, rows: target, columns: prediction; moves to the device of the first batch counted
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix = torch.zeros_like(self.matrix)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count a batch: predicted class indices and target indices of one shape, e.g. (B, H, W)
        (`logits.argmax(1)` for the prediction). A value outside the classes is a ValueError."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape; "
                             "give class indices (logits.argmax(1)), not logits")
        n = self.num_classes
        pred, target = pred.detach().flatten().long(), target.detach().flatten().long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        if target.numel():
            for what, values in (("target", target), ("pred", pred)):
                lo, hi = torch.aminmax(values)
                if lo < 0 or hi >= n:
                    bad = int(lo) if lo < 0 else int(hi)
                    raise ValueError(f"{what} value {bad} is not a class (0-{n - 1}) nor the ignore index "
                                     f"{self.ignore_index}")
        counts = torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)  # (C, C)
        self.matrix = self.matrix.to(counts.device) + counts

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(f"cannot merge a confusion matrix of {other.num_classes} classes (ignore "
                             f"{other.ignore_index}) into one of {self.num_classes} (ignore {self.ignore_index})")
        self.matrix = self.matrix + other.matrix.to(self.matrix.device)
        return self

    def counts(self) -> np.ndarray:
        """(C, C) int64 pixel counts, rows: target class, columns: predicted class."""
        return self.matrix.cpu().numpy().copy()

    def compute(self) -> dict:
        mat = self.counts().astype(np.float64)
        tp, targets, predicted = np.diag(mat), mat.sum(1), mat.sum(0)
        scored = np.ones(self.num_classes, bool)
        if self.ignore_index is not None and self.ignore_index < self.num_classes:
            scored[self.ignore_index] = False
        union = targets + predicted - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(scored & (union > 0), tp / union, np.nan)
            acc = np.where(scored & (targets > 0), tp / targets, np.nan)
        total = targets.sum()
        return {
            "miou": _nanmean(iou),
            "global_acc": float(tp[scored].sum() / total) if total else math.nan,
            "mean_class_acc": _nanmean(acc),
            "iou_per_class": iou.tolist(),
            "acc_per_class": acc.tolist(),
        }


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


__all__ = ["ConfusionMatrix", "Mean", "MetricSet", "PSNR_CAP", "modcrop", "psnr", "psnr_torch", "rgb_to_y", "ssim"]
