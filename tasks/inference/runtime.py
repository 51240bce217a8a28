"""The model at run time: loaded once per process by card, sized to the memory budget, run on its device.

    load_model(card, device)   weights by card, cached per process by (uri, weights digest, device)
    Runtime.of(card, cfg)      the loaded model's forward, tile, overlap and grid, batch size, batch shapes, I/O threads
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import platform
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass

from pixelmill.tasks.core import registry
from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.inference.plan import ApplyConfig

# Activation bytes per output pixel per unit of the model's base width, measured on unet-plain under
# inference_mode (peak RSS growth of a forward, float32: 30-47): a conservative guide for the batch size.
ACTIVATION_BYTES_PER_PIXEL_PER_CHANNEL = 48
# What a process holds before any image: Python, torch, the model (measured: ~0.45 GiB on CPU).
BASE_MEMORY = 600 * 2**20
# On a CPU a batch is no faster per pixel than a single tile once tiles are this large (measured on
# unet-plain: 64x64 tiles gain from batches of 16, 256x256 tiles lose 2x in batches of 4): only small tiles
# share a forward there.
CPU_BATCH_PIXELS = 256 * 256
# On a CPU a tile whose activations stay in cache is faster per pixel than a whole photo, overlap included
# (unet-plain x2, 30 photos of 0.1-0.4 MP, 2 cores: base 16 at tile 384 took 0.74x the whole-image time,
# base 32 at tile 256 0.72x; larger tiles lost). tile^2 * base ~ this many values sets the CPU's default tile.
CPU_TILE_VALUES = 384 * 384 * 16
GPU_TILE = 512
# oneDNN (PyTorch's CPU convolutions) caches a compiled primitive per layer and input shape, 1024 by default:
# with tiles of many sizes that held ~0.8 GiB after 30 photos and kept growing. 64 holds the primitives of one
# forward with room to spare (measured: the same speed, peak RSS 1.02 GiB instead of 1.67). oneDNN reads it
# when it makes its first primitive, so it is set when a model is loaded for inference, before any forward.
ONEDNN_CACHE = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
MODELS_KEPT = 2  # per process: the model of this run and, at most, the one before
# glibc's malloc keeps what a shard frees (decoded photos, tile activations, encoded files) inside its heap and
# returns only the heap's top to the system: measured (unet-plain x2 base 8, shards of 16 on a CPU), a process held
# 200-460 MiB free inside malloc after each shard against 160-200 MiB in use, and RSS between shards drifted up
# (apply_local 999 -> 1075 MiB over 3 shards). malloc_trim(0) after each shard: 813-827 MiB, flat. It does not
# lower the peak inside a shard (the largest tile's forward), nor did fewer arenas (MALLOC_ARENA_MAX=2): see
# bench/README.md, apply.

_models: OrderedDict[tuple, tuple] = OrderedDict()
_models_lock = threading.Lock()


def load_model(card: ModelCard, device: str):
    """(model in eval mode on its device, device). A version's files never change, so its URI and weights
    digest key the cache: the threads of one process share one model."""
    key = (card.uri, card.weights_sha256, device)
    with _models_lock:  # threads of one worker start together: one of them loads
        if key not in _models:
            _models[key] = _load(card, device)
            while len(_models) > MODELS_KEPT:
                _models.popitem(last=False)
        _models.move_to_end(key)
        return _models[key]


@functools.cache
def glibc():
    """The process's C library when it is glibc on Linux (malloc_trim is glibc's), else None."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


def release_memory() -> None:
    """After a shard: give back to the system what malloc holds free (glibc; elsewhere nothing)."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _load(card: ModelCard, device: str):
    os.environ.setdefault(*ONEDNN_CACHE)
    import torch

    from pixelmill.models.device import pick_device

    dev = pick_device(device)
    model = registry.load_weights(card).to(dev).eval()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, dev


def default_tile(width: int, gpu: bool) -> int:
    """512 on a GPU; on a CPU the cache-sized tile for a model of this base width (a multiple of 32, 128-512)."""
    if gpu:
        return GPU_TILE
    return max(128, min(512, int((CPU_TILE_VALUES / max(width, 1)) ** 0.5) // 32 * 32))


def io_threads_for(gpu: bool, workers: int) -> int:
    """Readers and writers (each) per shard. On a CPU the model takes every core, and more threads only
    compete with it; a GPU waits on decoding and encoding (measured on an H200 with 2 each: 10 images/s
    against a pure forward's 30), so there they get the worker's share of the cores."""
    if not gpu:
        return 2
    return max(2, min(8, (os.cpu_count() or 1) // max(workers, 1)))


def auto_batch(cfg: ApplyConfig, card: ModelCard, gpu: bool = False) -> tuple[int, int]:
    """(tile, batch size) that fit cfg.max_memory: the tile shrinks only when one tile alone does not fit."""
    scale, width = card.scale, card.width
    # a third for activations; the rest holds decoded, finished and encoded images (3 copies of the largest)
    budget = max(cfg.max_memory - BASE_MEMORY, 64 * 2**20) // 3
    tile = cfg.tile or max(default_tile(width, gpu), 2 * model_overlap(cfg, card) + 32)
    while tile > 64 and tile**2 * scale**2 * width * ACTIVATION_BYTES_PER_PIXEL_PER_CHANNEL > budget:
        tile //= 2
    per_tile = tile**2 * scale**2 * width * ACTIVATION_BYTES_PER_PIXEL_PER_CHANNEL
    return tile, cfg.batch_size or int(max(1, min(64, budget // per_tile)))


def model_overlap(cfg: ApplyConfig, card: ModelCard, tile: int | None = None) -> int:
    """cfg.overlap counted at the network's working resolution: a net that shrinks its input by input_scale
    (segmentation's default 0.5) sees that much less of the overlap, so the tiles share overlap / input_scale
    input pixels, as much context at a seam as a full-size net gets. The scaling stops at half the tile (more
    would compute most pixels several times); the overlap asked for is kept."""
    overlap = math.ceil(cfg.overlap / card.input_scale)
    return min(overlap, max(cfg.overlap, tile // 2)) if tile else overlap


def stride_grid(model, card: ModelCard) -> int:
    """The network's stride in input pixels, which tiles start on (tiling.tile_span): its `stride` (the U-Nets
    pad to it) over input_scale, rounded (exact for a scale of 1/n); 1 for a net that has none (imported)."""
    return max(1, round(getattr(model, "stride", 1) / card.input_scale))


def make_forward(model, dev):
    """(B, C, h, w) float CPU -> model output on the CPU: inference_mode, channels_last and AMP on CUDA."""
    import torch

    @torch.inference_mode()
    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(dev, non_blocking=True)
        if dev.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return model(x.contiguous(memory_format=torch.channels_last)).float().cpu()
        return model(x)

    return forward


@dataclass(frozen=True)
class Runtime:
    """How this process runs a card's model: the forward and the tiling and batching that fit its budget."""

    forward: object  # (B, C, h, w) float -> (B, out_channels, h*scale, w*scale) on the CPU
    gpu: bool
    tile: int
    overlap: int  # pixels neighbouring tiles share (model_overlap)
    batch: int
    multiple: int  # tiles are padded to a multiple of this (fewer shapes for cuDNN to tune)
    batch_pixels: int | None  # at most this many pixels per forward (a CPU's small tiles only)
    io_threads: int
    grid: int = 1  # tiles start on multiples of this (stride_grid)

    @classmethod
    def of(cls, card: ModelCard, cfg: ApplyConfig) -> Runtime:
        import torch

        from pixelmill.tasks.inference.tiling import SHAPE_MULTIPLE

        model, dev = load_model(card, cfg.device)
        grid = stride_grid(model, card)
        if cfg.tta:
            from pixelmill.models.tta import SelfEnsemble

            model = SelfEnsemble(model)
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // cfg.workers))
        gpu = dev.type == "cuda"
        tile, batch = auto_batch(cfg, card, gpu)
        if gpu:
            multiple, batch_pixels = SHAPE_MULTIPLE, None
        else:
            multiple, batch_pixels = 1, None if cfg.batch_size else CPU_BATCH_PIXELS
        return cls(make_forward(model, dev), gpu, tile, model_overlap(cfg, card, tile), batch, multiple, batch_pixels,
                   cfg.io_threads or io_threads_for(gpu, cfg.workers), grid)
