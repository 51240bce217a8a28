"""Segmentation training data: image/mask pairs straight from the `images` table (no crappify needed).

Augmentation (train mode) follows torchvision's segmentation references: scale the pair by a random factor
(bilinear for the image, nearest for the mask), pad what is smaller than the crop (the mask with the ignore
index, so padding is never learned as a class), take a random crop, flip horizontally, then jitter the
image's colours (the mask is untouched). The mask is resized with NEAREST_EXACT, which samples pixel
centres like the bilinear resize of the image does; torch's plain NEAREST is off by half a pixel.

Every random draw comes from `np.random.default_rng([seed, item number])`, never from torch's global RNG,
so an item is the same on every run and in any worker, and a resumed run sees the same batches (see
`datasets.SampleStream`); the ops are torchvision.transforms.v2's functional ones on `tv_tensors`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow.dataset as ds
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.classes import ClassMap, mask_to_indices
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.core.images import ImageError, normalize_mode, open_image
from pixelmill.tasks.training.config import check_augmentation
from pixelmill.tasks.training.datasets import DecodedCache, fetch


@dataclass(frozen=True)
class SegRecord:
    uri: str
    mask_uri: str
    width: int
    height: int


def load_segmentation_records(catalog: Catalog, dataset: str, split: str | None) -> tuple[list[SegRecord], int]:
    """(ok images of a split that have a mask, in a stable order; how many rows were skipped: error rows
    and images without a mask). split=None: every split."""
    filt = ds.field("split") == split if split is not None else None
    rows = catalog.read("images", dataset, columns=["uri", "mask_uri", "width", "height", "status"],
                        filter=filt).to_pylist()
    ok = [SegRecord(r["uri"], r["mask_uri"], r["width"], r["height"]) for r in rows
          if r["status"] == "ok" and r["mask_uri"]]
    return sorted(ok, key=lambda r: r.uri), len(rows) - len(ok)


def load_pair(record: SegRecord, class_map: ClassMap, cache_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, class indices (H, W) uint8); PixelmillError naming the file when either is
    unreadable, the mask holds a label outside the map, or the sizes differ."""
    try:
        im, _ = open_image(fetch(record.uri, cache_dir))
        image = np.array(normalize_mode(im, "RGB"))  # writable: torch.from_numpy warns on read-only arrays
    except ImageError as exc:
        raise PixelmillError(f"{record.uri}: {exc}", "re-run ingest: the file changed since") from None
    try:
        mask, _ = open_image(fetch(record.mask_uri, cache_dir))
        indices = mask_to_indices(mask, class_map)
    except (ImageError, ValueError) as exc:
        raise PixelmillError(f"mask {record.mask_uri}: {exc}",
                             "fix the mask, or train with the class map it was made for (--classes)") from None
    if indices.shape != image.shape[:2]:
        raise PixelmillError(f"mask {record.mask_uri} is {indices.shape[1]}x{indices.shape[0]}, its image "
                             f"{record.uri} {image.shape[1]}x{image.shape[0]}", "re-run ingest with --masks")
    return image, indices


# ------------------------------------------------------------------------------------------- augmentation

Size = tuple[int, int]  # (height, width)


def _pad_to(image: torch.Tensor, mask: torch.Tensor, size: Size, fill: int | None) -> tuple[torch.Tensor, ...]:
    """Pad at the bottom and right to at least `size`: image with 0, mask with `fill` (the ignore index);
    without an ignore index both repeat their edge, so every padded pixel keeps a true label."""
    ph, pw = max(0, size[0] - image.shape[-2]), max(0, size[1] - image.shape[-1])
    if not ph and not pw:
        return image, mask
    padding = [0, 0, pw, ph]
    if fill is None:
        return TF.pad(image, padding, padding_mode="edge"), TF.pad(mask, padding, padding_mode="edge")
    return TF.pad(image, padding, fill=0), TF.pad(mask, padding, fill=fill)


def augment(image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator, crop: Size | None,
            scale_range: tuple[float, float] = (0.5, 2.0), hflip: bool = True,
            color_jitter: Sequence[float] = (0.25, 0.25, 0.25, 0.02), fill: int | None = None,
            interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> tuple[torch.Tensor, torch.Tensor]:
    """Jointly augment image (3, H, W) uint8 and mask (1, H, W) uint8 with draws from `rng` only.

    Scale by s ~ U(scale_range), pad to `crop` and crop it at random (crop None: keep the whole scaled
    pair), flip with p 0.5, then brightness/contrast/saturation/hue jitter of the image in a random order
    (factors 1 +- color_jitter[:3], hue shift +- color_jitter[3]).
    """
    image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
    h, w = image.shape[-2:]
    s = rng.uniform(*scale_range)
    size = [max(1, round(h * s)), max(1, round(w * s))]
    if crop is not None and size[0] >= crop[0] and size[1] >= crop[1]:
        # The same draws and window as scaling the whole pair, then cropping, but only the window's source
        # pixels are resized: for a 960x720 photo at 2x, 0.07 MP instead of 2.8 (the loader was the bottleneck).
        y = int(rng.integers(0, size[0] - crop[0] + 1))
        x = int(rng.integers(0, size[1] - crop[1] + 1))
        fy, fx = h / size[0], w / size[1]
        box_h, box_w = max(1, round(crop[0] * fy)), max(1, round(crop[1] * fx))
        top, left = min(round(y * fy), h - box_h), min(round(x * fx), w - box_w)
        image = TF.resized_crop(image, top, left, box_h, box_w, list(crop), interpolation=interpolation,
                                antialias=True)
        # as a plain tensor: torchvision's Mask kernel of resized_crop ignores `interpolation` (plain NEAREST)
        mask = tv_tensors.Mask(TF.resized_crop(mask.as_subclass(torch.Tensor), top, left, box_h, box_w, list(crop),
                                               interpolation=InterpolationMode.NEAREST_EXACT))
        crop = None  # done
    elif size != [h, w]:
        image = TF.resize(image, size, interpolation=interpolation, antialias=True)
        mask = TF.resize(mask, size, interpolation=InterpolationMode.NEAREST_EXACT)
    if crop is not None:
        image, mask = _pad_to(image, mask, crop, fill)
        y = int(rng.integers(0, image.shape[-2] - crop[0] + 1))
        x = int(rng.integers(0, image.shape[-1] - crop[1] + 1))
        image, mask = TF.crop(image, y, x, *crop), TF.crop(mask, y, x, *crop)
    if hflip and rng.random() < 0.5:
        image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
    b, c, sat, hue = color_jitter
    ops = [(TF.adjust_brightness, b), (TF.adjust_contrast, c), (TF.adjust_saturation, sat), (TF.adjust_hue, hue)]
    for k in rng.permutation(4):
        op, amount = ops[k]
        if amount:
            factor = rng.uniform(-amount, amount) if op is TF.adjust_hue else rng.uniform(1 - amount, 1 + amount)
            image = op(image, factor)
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def center_crop(image: torch.Tensor, mask: torch.Tensor, crop: Size, fill: int | None) -> tuple[torch.Tensor, ...]:
    """The centre `crop` of the pair, padded first where it is smaller."""
    image, mask = _pad_to(image, mask, crop, fill)
    y, x = (image.shape[-2] - crop[0]) // 2, (image.shape[-1] - crop[1]) // 2
    return image[..., y:y + crop[0], x:x + crop[1]], mask[..., y:y + crop[0], x:x + crop[1]]


# ------------------------------------------------------------------------------------------- data set


class SegmentationDataset(torch.utils.data.Dataset):
    """(image (3, H, W) float in [0, 1], mask (H, W) int64 class indices) for segmentation.

    train=True: `augment` with draws from (seed, item number) and crops of `crop` (an int or (h, w)).
    train=False: the whole image (crop None) or its centre crop, no randomness. Decoded pairs are kept in
    memory up to `cache_mb` per worker process; remote files are kept in `cache_dir` (see `fetch`).
    """

    def __init__(self, records: list[SegRecord], class_map: ClassMap, crop: int | Size | None = 256,
                 train: bool = True, seed: int = 0, scale_range: tuple[float, float] = (0.5, 2.0),
                 hflip: bool = True, color_jitter: Sequence[float] = (0.25, 0.25, 0.25, 0.02),
                 cache_dir: str | None = None, cache_mb: int = 1024):
        if not records:
            raise PixelmillError("no images with masks to train or validate on",
                                 "ingest images with --masks, and check the data set and split "
                                 "(`pixelmill catalog show images`)")
        check_augmentation(scale_range, color_jitter)
        self.records, self.class_map, self.train, self.seed = records, class_map, train, seed
        self.crop: Size | None = (crop, crop) if isinstance(crop, int) else (tuple(crop) if crop else None)
        self.scale_range, self.hflip, self.color_jitter = tuple(scale_range), hflip, tuple(color_jitter)
        self.cache_dir, self.cache = cache_dir, DecodedCache(cache_mb)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8, indices (H, W) uint8) of record i, decoded once while the cache has room."""
        return self.cache.get(i, lambda: load_pair(self.records[i], self.class_map, self.cache_dir))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item `i % len(self)`; in train mode `i` also seeds its augmentation (see `SampleStream`)."""
        image, indices = self.load(i % len(self.records))
        x = torch.from_numpy(image).permute(2, 0, 1)  # (3, H, W) uint8, a view of the cached array
        y = torch.from_numpy(indices).unsqueeze(0)  # (1, H, W) uint8
        fill = self.class_map.ignore_index
        if self.train:
            x, y = augment(x, y, np.random.default_rng([self.seed, i]), self.crop, self.scale_range, self.hflip,
                           self.color_jitter, fill)
        elif self.crop is not None:
            x, y = center_crop(x, y, self.crop, fill)
        return x.float().div(255), y[0].long()


# ------------------------------------------------------------------------------------------- class statistics


@functools.lru_cache(maxsize=4)
def _mask_statistics(records: tuple[SegRecord, ...], class_map: ClassMap,
                     cache_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of each class, pixels of the images each class appears in), both (K,) int64, ignored pixels
    left out of both. Cached: the objective asks for counts and weights of the same masks."""
    k, ignore = class_map.num_classes, class_map.ignore_index

    def count(record: SegRecord) -> np.ndarray:
        try:
            mask, _ = open_image(fetch(record.mask_uri, cache_dir))
            indices = mask_to_indices(mask, class_map)
        except (ImageError, ValueError) as exc:
            raise PixelmillError(f"mask {record.mask_uri}: {exc}", "fix the mask, or use the class map it was "
                                 "made for (--classes)") from None
        counts = np.bincount(indices.ravel(), minlength=256)[:k]  # (K,)
        if ignore is not None and ignore < k:
            counts[ignore] = 0
        return counts

    pixels, present = np.zeros(k, np.int64), np.zeros(k, np.int64)
    with ThreadPoolExecutor(min(8, len(records)) or 1) as pool:  # PNG decoding releases the GIL
        for counts in pool.map(count, records):
            pixels += counts
            present[counts > 0] += counts.sum()
    return pixels, present


def pixel_counts(records: Sequence[SegRecord], class_map: ClassMap, cache_dir: str | None = None) -> np.ndarray:
    """(K,) int64: how many pixels of each class the masks hold (0 for the ignored class)."""
    return _mask_statistics(tuple(records), class_map, cache_dir)[0].copy()


def median_frequency_weights(records: Sequence[SegRecord], class_map: ClassMap,
                             cache_dir: str | None = None) -> list[float]:
    """SegNet's median frequency balancing (Eigen & Fergus 2015): weight(c) = median(freq) / freq(c), where
    freq(c) = pixels of c / pixels of the images c appears in (ignored pixels counted in neither) and the
    median is over the classes that appear. A class that never appears gets 1.0, the median class's weight
    (no training pixel uses it, and a validation pixel of it then counts like a typical class); the
    ignored class gets 0.0 (its pixels never count)."""
    pixels, present = _mask_statistics(tuple(records), class_map, cache_dir)
    seen = pixels > 0
    if not seen.any():
        raise PixelmillError("the masks hold no labelled pixel (all are the ignore index)",
                             "check the masks and the class map's ignore_index")
    freq = np.where(seen, pixels / np.maximum(present, 1), np.nan)
    weights = np.where(seen, np.nanmedian(freq) / freq, 1.0)
    if class_map.ignore_index is not None and class_map.ignore_index < class_map.num_classes:
        weights[class_map.ignore_index] = 0.0
    return [float(w) for w in weights]


__all__ = ["SegRecord", "SegmentationDataset", "augment", "center_crop", "load_pair", "load_segmentation_records",
           "median_frequency_weights", "pixel_counts"]
