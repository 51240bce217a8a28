"""Evaluation, the pure part: per-image PSNR/SSIM (Y and RGB) of a model and of the baseline, in one pass.

The baseline is what you get without the model: bicubic upscaling for super-resolution, the input
itself for same-size restoration. Scores follow the SR convention: `scale` pixels cropped at the border,
Y channel per ITU-R BT.601 (MATLAB), on 8-bit images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from pixelmill.models.device import to_uint8
from pixelmill.models.unet import residual_base
from pixelmill.tasks.core.images import GALLERY_CROP, busiest_window, crop, nearest_resize
from pixelmill.tasks.training.datasets import PairDataset, PairRecord
from pixelmill.tasks.training.metrics import PSNR_CAP, psnr, ssim


@dataclass
class Evaluation:
    """A registered model scored on one split: per-image rows, means per method, a few images to show."""

    rows: list[dict]
    means: dict[str, dict]  # method ("model", "baseline") -> {metric: value, "images": n}
    images: int
    skipped: int
    baseline: str  # what "baseline" rows measure, e.g. bicubic
    gallery: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # images per row, as the objective labels them
    gallery_captions: list[tuple[str, ...]] = field(default_factory=list)  # one per image, when crops carry scores
    report: str = ""  # extra Markdown for the report (a segmentation model's per-class table, its confusion matrix)


def scores(pred: np.ndarray, target: np.ndarray, scale: int) -> dict:
    border = scale if scale > 1 else 0
    cap = lambda v: min(v, PSNR_CAP)  # noqa: E731
    return {"psnr_y": cap(psnr(pred, target, crop_border=border, y_channel=True)),
            "ssim_y": ssim(pred, target, crop_border=border, y_channel=True),
            "psnr_rgb": cap(psnr(pred, target, crop_border=border)),
            "ssim_rgb": ssim(pred, target, crop_border=border)}


def gallery_crops(lr: np.ndarray, base: np.ndarray, pred: np.ndarray, target: np.ndarray,
                  size: int = GALLERY_CROP) -> tuple[tuple[np.ndarray, ...], tuple[str, ...]]:
    """1:1 crops of (input, baseline, model, target) where model and baseline differ most, the input upscaled
    (nearest) to the target's size; captions: each crop's Y-PSNR against the target crop."""
    lr_up = nearest_resize(lr, *target.shape[:2])
    top, left = busiest_window(pred, base, size)
    crops = tuple(crop(a, top, left, size) for a in (lr_up, base, pred, target))
    scores = (min(psnr(c, crops[-1], y_channel=True), PSNR_CAP) for c in crops[:-1])
    return crops, (*(f"{s:.2f} dB" for s in scores), "")


@torch.inference_mode()
def evaluate_pairs(model: torch.nn.Module, records: list[PairRecord], scale: int, in_channels: int,
                   device: torch.device, keep_images: int = 0) -> tuple[list[dict], list[tuple], list[tuple]]:
    """Per-pair scores for model and baseline; also gallery crops (input, baseline, model, target) of the first
    few pairs and their captions (see `gallery_crops`)."""
    model = model.to(device).eval()
    data = PairDataset(records, scale, crop=None, train=False, in_channels=in_channels, cache_mb=0)
    rows, gallery, captions = [], [], []
    for i, rec in enumerate(records):
        x, y = (t.unsqueeze(0).to(device) for t in data[i])
        pred, base = model(x)[0], residual_base(x, scale, 3)[0]  # the baseline: a plain (bicubic) resize
        target = to_uint8(y[0])
        m, b = to_uint8(pred), to_uint8(base)
        rows.append({"item_id": rec.pair_id, "method": "model"} | scores(m, target, scale))
        rows.append({"item_id": rec.pair_id, "method": "baseline"} | scores(b, target, scale))
        if i < keep_images:
            crops, caps = gallery_crops(to_uint8(x[0]), b, m, target)
            gallery.append(crops)
            captions.append(caps)
    return rows, gallery, captions


def mean_scores(rows: list[dict], method: str) -> dict:
    chosen = [r for r in rows if r["method"] == method]
    keys = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
    return {k: float(np.mean([r[k] for r in chosen])) if chosen else math.nan for k in keys} | {"images": len(chosen)}
