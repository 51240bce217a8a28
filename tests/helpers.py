"""Test data and Prefect-free runs of the stages, shared by the test modules."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.prep.crappify import CrappifyConfig, crappify_shard, plan_crappify
from pixelmill.tasks.prep.ingest import IngestConfig, existing_versions, finalize_dataset, ingest_shard, plan_ingest


def noise_png(w: int, h: int, seed: int = 0, mode: str = "RGB") -> bytes:
    """Random pixels as a PNG: every file different, each size exactly as asked."""
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "PNG")
    return buf.getvalue()


def make_image(w: int = 200, h: int = 150, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Gradients, a sine texture, two shapes and a little noise: something every degradation visibly changes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    texture = 60 * np.sin(x / 3.0) * np.cos(y / 4.0)
    a = np.stack([x / w * 200 + texture, y / h * 200 - texture, 128 + texture], axis=-1)
    a += rng.normal(0, 6, a.shape)
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.rectangle((w // 8, h // 8, w // 3, h // 2), fill=(250, 30, 30))
    draw.ellipse((w // 2, h // 3, w - 10, h - 10), fill=(20, 40, 230))
    return img.convert(mode)


def texture_png(seed: int, size: int = 64) -> bytes:
    """Smooth waves plus an edge: something a tiny network can learn to upscale better than bicubic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(2 * np.pi * (x * rng.uniform(1, 4) + y * rng.uniform(1, 4)) + rng.uniform(0, 6))
                    for _ in range(3)], -1)
    img = ((img + 1) * 127.5).astype(np.uint8)
    img[rng.integers(0, size // 2):, rng.integers(0, size // 2):] //= 2
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def ingest_local(source: str, workspace: str, dataset: str = "d", **cfg) -> Catalog:
    """What the ingest flow does, minus Prefect: plan, every shard, finalize."""
    config = IngestConfig(**cfg)
    catalog = Catalog(workspace)
    plan = plan_ingest(dataset, storage.iter_files(source), existing_versions(catalog, dataset), config)
    for shard in plan.shards:
        ingest_shard(shard, workspace, config)
    finalize_dataset(catalog, dataset)
    return catalog


def crappify_local(workspace: str, dataset: str = "d", **cfg) -> list[dict]:
    """What the crappify flow does, minus Prefect; returns the set's pairs rows."""
    config = CrappifyConfig(**cfg)
    plan = plan_crappify(Catalog(workspace), dataset, config)
    for shard in plan.shards:
        crappify_shard(shard, workspace, config)
    return Catalog(workspace).read("pairs", plan.set_name).to_pylist()


# Known harmless stderr lines of a `pixelmill` subprocess: a check that demands an empty stderr fails on a new
# dependency's deprecation warning; one that accepts anything misses a banner or a traceback. Each pattern names
# one line that is not ours and says nothing about the run; everything else is unexpected.
HARMLESS_STDERR = (
    # torch on a CPU without NNPACK support (some cloud VMs), printed once at the first convolution
    r"\[W\d{4} [\d:.]+ \d+ \S*NNPACK\.cpp:\d+\] Could not initialize NNPACK! Reason: Unsupported hardware\.",
    # a dependency's (not pixelmill's) deprecation notice; Python prints its source line under it, indented
    r"\S*/site-packages/\S+\.py:\d+: (DeprecationWarning|PendingDeprecationWarning|FutureWarning): .*",
)


def unexpected_stderr(text: str, allow: tuple[str, ...] = HARMLESS_STDERR) -> list[str]:
    """The lines of `text` that no pattern of `allow` matches whole (a warning's indented source line goes with
    it); an empty list when stderr said nothing unexpected."""
    import re

    patterns = [re.compile(p) for p in allow]
    unexpected, skip_source = [], False
    for line in text.splitlines():
        if skip_source and line.startswith("  "):
            skip_source = False
            continue
        skip_source = False
        if any(p.fullmatch(line) for p in patterns):
            skip_source = "Warning: " in line
            continue
        if line.strip():
            unexpected.append(line)
    return unexpected
