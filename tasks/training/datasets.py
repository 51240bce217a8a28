"""Training data from a `pairs` table: aligned random crops, flips, a local cache of remote files.

The model's input is the LR image at HR size / scale: for super-resolution sets (sr-x2: HR = 2 x LR
exactly) that is the LR file itself; for sets whose sizes are not an exact multiple (lesson7 shrinks to
a short side of 96) the LR is resized to HR / scale with bicubic, as fastai's lesson 7 did.

The HR target is a file crappify wrote or the source image it refers to (cropped, tasks/core/pairs.py): both read
through `load_hr`, to the same pixels. `load_pairs` leaves out, with a warning that names them, pairs whose source
changed or vanished since crappify, and fails when that leaves a split with none.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass

import numpy as np
import pyarrow.dataset as ds
import torch
from PIL import Image

from pixelmill.models.device import to_tensor
from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.core.pairs import HrRef, check_sources, load_hr, report_stale

log = logging.getLogger("pixelmill.training")


@dataclass(frozen=True)
class PairRecord:
    pair_id: str
    lr_uri: str
    hr_uri: str
    hr_width: int
    hr_height: int
    lr_width: int
    lr_height: int
    hr: HrRef | None = None  # how to read the HR target (None: the file at hr_uri, a copy)

    @property
    def hr_ref(self) -> HrRef:
        return self.hr or HrRef(self.hr_uri)


def load_pairs(catalog: Catalog, set_name: str, split: str) -> tuple[list[PairRecord], int]:
    """(usable pairs of a split in a stable order, how many were skipped: error rows, and pairs whose referenced
    source changed or vanished since crappify, which a warning names)."""
    table = catalog.read("pairs", set_name, filter=ds.field("split") == split)
    rows = table.to_pylist()
    ok = [PairRecord(r["pair_id"], r["lr_uri"], r["hr_uri"], r["hr_width"], r["hr_height"], r["lr_width"],
                     r["lr_height"], HrRef.of(r)) for r in rows if r["status"] == "ok"]
    stale = check_sources((r.pair_id, r.hr_ref) for r in ok)
    if stale:
        message = report_stale(set_name, split, {r.pair_id: (r.hr_uri, stale[r.pair_id])
                                                 for r in ok if r.pair_id in stale})
        if len(stale) == len(ok):
            raise PixelmillError(message, "every usable pair of the split is affected: nothing is left to read")
        log.warning(message)
    usable = [r for r in ok if r.pair_id not in stale]
    return sorted(usable, key=lambda r: r.pair_id), len(rows) - len(usable)


def infer_scale(records: list[PairRecord]) -> int:
    """The integer factor when every pair's HR is exactly s x its LR, else 1 (same-size restoration)."""
    ratios = {(r.hr_width / r.lr_width, r.hr_height / r.lr_height) for r in records}
    if len(ratios) == 1:
        (sx, sy), = ratios
        if sx == sy and sx == int(sx) and int(sx) in (2, 3, 4, 8):
            return int(sx)
    return 1


def fetch(uri: str, cache_dir: str | None) -> bytes:
    """Read a file; remote files are kept in cache_dir so later epochs and runs read them locally."""
    if cache_dir is None or storage.normalize_url(uri).startswith("file://"):
        return storage.read_bytes(uri)
    path = os.path.join(cache_dir, hashlib.sha256(uri.encode()).hexdigest()[:32])
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    data = storage.read_bytes(uri)
    storage.write_bytes(path, data)
    return data


def _pad_to(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = max(0, h - arr.shape[0]), max(0, w - arr.shape[1])
    if not ph and not pw:
        return arr
    mode = "reflect" if ph < arr.shape[0] and pw < arr.shape[1] else "edge"
    return np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode=mode)


class DecodedCache:
    """Decoded arrays kept in memory up to a byte budget (per worker process): decoding a PNG costs more than
    a CPU training step, and epochs revisit every item."""

    def __init__(self, budget_mb: int):
        self.budget, self.used, self.items = budget_mb * 2**20, 0, {}

    def get(self, key, load):
        """The cached value of `key`, else load() kept while the budget has room."""
        if key in self.items:
            return self.items[key]
        value = load()
        size = sum(a.nbytes for a in value)
        if self.used + size <= self.budget:
            self.items[key], self.used = value, self.used + size
        return value


class PairDataset(torch.utils.data.Dataset):
    """(input, target) tensors in [0, 1]; train mode crops `crop` LR pixels at random and flips/rotates,
    with draws that depend only on (seed, item number), never on a global RNG.

    Eval mode takes the centre crop (or the whole image when crop is None). Decoded images are kept in
    memory up to `cache_mb` per worker process, since decoding a PNG costs more than a CPU training step.
    """

    def __init__(self, records: list[PairRecord], scale: int, crop: int | None, train: bool,
                 in_channels: int = 3, cache_dir: str | None = None, cache_mb: int = 1024, seed: int = 0):
        if not records:
            raise PixelmillError("no usable pairs to train or validate on",
                                 "check the set name and split (`pixelmill catalog show pairs`)")
        self.records, self.scale, self.crop, self.train = records, scale, crop, train
        self.in_channels, self.cache_dir, self.seed = in_channels, cache_dir, seed
        self.cache = DecodedCache(cache_mb)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(LR at HR/scale size, HR) as uint8 (H, W, C) arrays."""
        return self.cache.get(i, lambda: self._decode(self.records[i]))

    def _decode(self, rec: PairRecord) -> tuple[np.ndarray, np.ndarray]:
        hr = load_hr(rec.hr_ref, lambda uri: fetch(uri, self.cache_dir))
        lr = Image.open(io.BytesIO(fetch(rec.lr_uri, self.cache_dir))).convert("RGB")
        target = (hr.width // self.scale, hr.height // self.scale)
        hr = hr.crop((0, 0, target[0] * self.scale, target[1] * self.scale))
        if lr.size != target:
            lr = lr.resize(target, Image.Resampling.BICUBIC)
        if self.in_channels == 1:
            lr = lr.convert("L")
        return np.asarray(lr).reshape(lr.height, lr.width, -1), np.asarray(hr)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item `i % len(self)`; in train mode `i` also seeds its crop and flips (see `SampleStream`)."""
        lr, hr = self.load(i % len(self.records))
        s, c = self.scale, self.crop
        rng = np.random.default_rng([self.seed, i]) if self.train else None
        if c is not None:
            lr, hr = _pad_to(lr, c, c), _pad_to(hr, c * s, c * s)
            if rng is not None:
                y, x = int(rng.integers(0, lr.shape[0] - c + 1)), int(rng.integers(0, lr.shape[1] - c + 1))
            else:
                y, x = (lr.shape[0] - c) // 2, (lr.shape[1] - c) // 2
            lr, hr = lr[y:y + c, x:x + c], hr[y * s:(y + c) * s, x * s:(x + c) * s]
        if rng is not None:
            flip, turns = int(rng.integers(0, 2)), int(rng.integers(0, 4))
            if flip:
                lr, hr = lr[:, ::-1], hr[:, ::-1]
            lr, hr = np.rot90(lr, turns), np.rot90(hr, turns)
        return to_tensor(lr), to_tensor(hr)


class SampleStream(torch.utils.data.Sampler):
    """An endless stream of item numbers: epoch e is a permutation of 0..n-1 seeded by (seed, e), each number
    offset by e*n so that it also names the draw of its augmentation.

    Everything a batch contains is a function of (seed, position in the stream): a run resumed at position p
    sees exactly the batches an uninterrupted run saw from p on, whatever the number of loader workers.
    """

    def __init__(self, n: int, seed: int, start: int = 0):
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self):
        epoch, offset = divmod(self.start, self.n)
        while True:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            for j in order[offset:].tolist():
                yield epoch * self.n + j
            epoch, offset = epoch + 1, 0
