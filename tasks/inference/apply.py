"""Bulk apply, the pure part: a registered model over a folder, bucket, archive or data set -> outputs + rows.

    plan_apply(...)     streams the listing (or the images table's ok rows), skips inputs this model version
                        already did for this output (same bytes and version, or same sha256), cuts shards
    apply_shard(...)    reader threads decode -> the model runs batches of tiles -> writer threads encode and
                        write; each output is written whole, then the shard's catalog part records them all

Outputs mirror the inputs' relative names under the output URL through `names.output_relpath` (a name can
never leave the output prefix). The name's hash comes from the relative name and the content, so two names
that clean to the same folder and stem stay apart. Unsafe names (absolute, `..`, control characters) are
`unsafe_name` rows: never read, nothing written. A bad image is an error row of the images table's kinds.

A shard's id hashes the model version, the output and its inputs: a rerun after a crash (kill -9 included)
redoes the unrecorded shards, rewriting the same files atomically, and replaces the same catalog parts.
"""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
import queue
import re
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import pyarrow.dataset as ds
from pydantic import BaseModel, ConfigDict, Field

from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import ConfigError, PixelmillError
from pixelmill.tasks.core.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, decode_image
from pixelmill.tasks.core.names import output_relpath, storable, unsafe_reason
from pixelmill.tasks.core.registry import ModelVersion
from pixelmill.tasks.core.shards import ShardResult, chunks, commit_shard, shard_id
from pixelmill.tasks.core.storage import FileInfo

# oneDNN (PyTorch's CPU convolutions) caches a compiled primitive per layer and input shape, 1024 by default:
# with tiles of many sizes that held ~0.8 GiB after 30 photos and kept growing. 64 holds the primitives of one
# forward with room to spare (measured: the same speed, peak RSS 1.02 GiB instead of 1.67). Read when oneDNN
# makes its first primitive, so set before any convolution runs in this process.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

DATASET_PREFIX = "dataset:"
WRITE_FAILED = "write_failed"
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
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


def default_max_memory() -> int:
    """Half the machine's memory: room for the OS, the Prefect worker and another job."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "k": 2**10, "m": 2**20, "g": 2**30}


def parse_bytes(text: str) -> int:
    """'2GiB', '1500MB', '3g' or a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"cannot read {text!r} as a memory size", "e.g. 2GiB, 1500MB or 3g")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class ApplyConfig(BaseModel):
    """How to apply a model in bulk. Every field has a default that runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tile: int | None = Field(None, ge=32, le=8192, description="tile side in input pixels; larger images go in "
                             "tiles (default: 512 on a GPU; on a CPU sized to the model, for the cache)")
    overlap: int = Field(32, ge=0, le=1024, description="pixels neighbouring tiles share, blended (feathered)")
    batch_size: int | None = Field(None, ge=1, le=1024, description="tiles per forward (default: what fits "
                                   "max_memory on a GPU; on a CPU only small tiles, up to 64k pixels, share one)")
    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(92, ge=1, le=100, description="JPEG/WebP quality")
    overlay: bool = Field(False, description="segmentation: also write the classes blended on the image")
    force: bool = Field(False, description="reprocess inputs this model version already did")
    limit: int | None = Field(None, ge=1, description="process at most this many inputs (after skipping)")
    shard_size: int = Field(64, ge=1, le=100_000, description="images per task")
    workers: int = Field(1, ge=1, le=512, description="shards at once (threads sharing one model, or Dask workers)")
    io_threads: int | None = Field(None, ge=1, le=64, description="reader and writer threads inside a shard, "
                                   "each (default: 2 on a CPU; on a GPU the cores per worker, up to 8)")
    threads: int | None = Field(None, ge=1, le=512, description="torch intra-op threads (default: cores / workers)")
    max_memory: int = Field(default_factory=default_max_memory, ge=256 * 2**20,
                            description="bytes a worker process may use: sizes batches and queues")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    device: str = Field("auto", description="auto (CUDA when present), cpu or cuda:N")

    def check(self) -> ApplyConfig:
        if self.tile is not None and self.overlap >= self.tile:
            raise ConfigError(f"overlap {self.overlap} must be smaller than tile {self.tile}",
                              "e.g. --tile 512 --overlap 32")
        return self


@dataclass(frozen=True)
class ApplyItem:
    uri: str
    rel: str  # the name relative to the input root: what the output mirrors
    size: int
    version: str
    sha256: str | None = None  # known when the input is a data set of the images table


@dataclass(frozen=True)
class ApplyShard:
    model: ModelVersion
    output: str
    shard_id: str
    items: tuple[ApplyItem, ...]


@dataclass
class ApplyPlan:
    model: ModelVersion
    task: str
    output: str
    shards: list[ApplyShard]
    skipped: int = 0  # already done by this model version for this output
    other_files: int = 0  # not an image's extension
    limited: int = 0  # left for a later run by --limit

    @property
    def todo(self) -> int:
        return sum(len(s.items) for s in self.shards)


def _uri_path(uri: str) -> str:
    """The path part of a URI (an archive member's name for chains)."""
    head = uri.split("::")[0]
    return head.split("://", 1)[1] if "://" in head else head


def dataset_items(catalog: Catalog, dataset: str) -> list[ApplyItem]:
    """A data set's ok images, named relative to the folder all of them share."""
    t = catalog.read("images", dataset, columns=["uri", "sha256", "bytes", "source_version"],
                     filter=ds.field("status") == "ok")
    if t.num_rows == 0:
        raise ConfigError(f"data set {dataset!r} has no ok images in {catalog.workspace}",
                          "run `pixelmill ingest SOURCE --dataset NAME` first, or check the name and --workspace")
    uris = t["uri"].to_pylist()
    paths = [_uri_path(u) for u in uris]
    root = posixpath.commonpath([posixpath.dirname(p) or "/" for p in paths]) if len(paths) > 1 \
        else posixpath.dirname(paths[0])
    cut = len(root.rstrip("/")) + 1 if root not in ("", "/") else (1 if paths[0].startswith("/") else 0)
    return sorted((ApplyItem(u, p[cut:], b or 0, v or "", s) for u, p, s, b, v in
                   zip(uris, paths, t["sha256"].to_pylist(), t["bytes"].to_pylist(),
                       t["source_version"].to_pylist(), strict=True)), key=lambda i: i.uri)


def input_items(source: str, catalog: Catalog) -> Iterator[ApplyItem]:
    """Every file of a folder, bucket or archive (streamed), or a data set's ok images (`dataset:NAME`)."""
    if source.startswith(DATASET_PREFIX):
        yield from dataset_items(catalog, source[len(DATASET_PREFIX):])
        return
    info: FileInfo
    for info in storage.iter_files(source):
        yield ApplyItem(info.uri, info.rel, info.size, info.version)


def done_inputs(catalog: Catalog, mv: ModelVersion, output: str) -> dict[str, tuple]:
    """input_uri -> (bytes, version, sha256, error) of what this model version already wrote to `output`."""
    filt = (ds.field("model_version") == mv.version) & (ds.field("output_root") == output)
    t = catalog.read("predictions", mv.name, filter=filt,
                     columns=["input_uri", "input_bytes", "input_version", "input_sha256", "error"])
    cols = [t[c].to_pylist() for c in ("input_uri", "input_bytes", "input_version", "input_sha256", "error")]
    return {u: rest for u, *rest in zip(*cols, strict=True)}


def is_done(item: ApplyItem, done: tuple | None) -> bool:
    """Done: a row for the same content, ok or a bad input's error (which rereading cannot fix)."""
    if done is None:
        return False
    size, version, sha, error = done
    if (error or "").startswith(WRITE_FAILED):  # the store's problem: worth another try
        return False
    return (item.sha256 is not None and item.sha256 == sha) or (size, version) == (item.size, item.version)


def plan_apply(catalog: Catalog, mv: ModelVersion, task: str, source: str, output: str,
               cfg: ApplyConfig) -> ApplyPlan:
    """Stream the inputs, keep what this model version has not done for this output, cut shards."""
    output = storage.normalize_url(output, archives=False)
    if storage.archive_protocol(output) or "::" in output:
        raise ConfigError(f"cannot write outputs into an archive: {output}", "give a folder or bucket prefix")
    done = {} if cfg.force else done_inputs(catalog, mv, output)
    plan = ApplyPlan(mv, task, output, shards=[])
    settings = cfg.model_dump_json(include={"tile", "overlap", "format", "quality", "overlay", "max_pixels"})
    todo: list[ApplyItem] = []
    for item in input_items(source, catalog):
        if posixpath.splitext(item.rel)[1].lower() not in IMAGE_EXTENSIONS:
            plan.other_files += 1
        elif is_done(item, done.get(storable(item.uri))):
            plan.skipped += 1
        elif cfg.limit is not None and len(todo) >= cfg.limit:
            plan.limited += 1
        else:
            todo.append(item)
    for chunk in chunks(todo, cfg.shard_size):
        key = [(i.uri, i.size, i.version, i.sha256) for i in chunk]
        plan.shards.append(ApplyShard(mv, output, shard_id(mv.uri, output, settings, key), chunk))
    return plan


# ------------------------------------------------------------------ the model, once per process


@functools.lru_cache(maxsize=2)
def load_model(uri: str, device: str):
    """(model on its device, config): a version folder never changes, so its URI is the cache key."""
    import torch

    from pixelmill.models.device import pick_device

    name, version = uri.rstrip("/").rsplit("/", 2)[-2:]
    model, config, _ = registry.load(ModelVersion(name, version, uri))
    dev = pick_device(device)
    model = model.to(dev).eval()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, config, dev


def model_task(config: dict) -> str:
    return config.get("task") or "restoration"


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


def auto_batch(cfg: ApplyConfig, config: dict, gpu: bool = False) -> tuple[int, int]:
    """(tile, batch size) that fit cfg.max_memory: the tile shrinks only when one tile alone does not fit."""
    scale = int(config["model"].get("scale", 1))
    width = int(config["model"].get("base", 64))
    # a third for activations; the rest holds decoded, finished and encoded images (3 copies of the largest)
    budget = max(cfg.max_memory - BASE_MEMORY, 64 * 2**20) // 3
    tile = cfg.tile or max(default_tile(width, gpu), 2 * cfg.overlap + 32)
    while tile > 64 and tile**2 * scale**2 * width * ACTIVATION_BYTES_PER_PIXEL_PER_CHANNEL > budget:
        tile //= 2
    per_tile = tile**2 * scale**2 * width * ACTIVATION_BYTES_PER_PIXEL_PER_CHANNEL
    return tile, cfg.batch_size or int(max(1, min(64, budget // per_tile)))


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


# ------------------------------------------------------------------ one shard


@dataclass
class _Job:
    index: int
    item: ApplyItem
    started: float
    sha256: str | None = None
    size: tuple[int, int] | None = None
    tiles: int = 0
    image: np.ndarray | None = None  # kept only for the overlay


def output_name(item: ApplyItem, sha256: str, extension: str) -> str:
    """The safe relative output path: mirrors item.rel; the hash keeps names that clean alike apart."""
    key = hashlib.sha256(f"{item.rel}\0{sha256}".encode("utf-8", "surrogateescape")).hexdigest()
    return output_relpath(item.rel, key, extension)


def encode(img, fmt: str, quality: int) -> bytes:
    import io

    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=1)  # level 1: ~3x faster than the default, ~10% larger
    else:
        img.save(buf, fmt.upper(), quality=quality)
    return buf.getvalue()


def apply_shard(shard: ApplyShard, workspace: str, cfg: ApplyConfig, run_id: str = "") -> ShardResult:
    """Run the model over a shard's inputs, write each output whole, then the shard's catalog part."""
    import torch
    from PIL import Image

    from pixelmill.tasks.core.classes import ClassMap, overlay, to_palette_image
    from pixelmill.tasks.inference.tiling import SHAPE_MULTIPLE, plan_tiles, run_tiled, to_indices, to_rgb8

    model, config, dev = load_model(shard.model.uri, cfg.device)
    task = model_task(config)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // cfg.workers))
    gpu = dev.type == "cuda"
    tile, batch = auto_batch(cfg, config, gpu)
    if gpu:
        multiple, batch_pixels = SHAPE_MULTIPLE, None
    else:
        multiple, batch_pixels = 1, None if cfg.batch_size else CPU_BATCH_PIXELS
    scale = int(config["model"].get("scale", 1))
    segmentation = task == "segmentation"
    classes = ClassMap(**config["classes"]) if segmentation else None
    channels = int(config["model"].get("out_channels", 3))
    mode = "L" if config["model"].get("in_channels", 3) == 1 else "RGB"
    extension = "png" if segmentation else EXTENSIONS[cfg.format]
    now = datetime.now(UTC)
    base_row = {"model": shard.model.name, "model_version": shard.model.version, "task": task,
                "output_root": shard.output, "run_id": run_id, "created_at": now, "status": "error"}
    rows: list[dict] = []
    rows_lock = threading.Lock()
    # Bounded: at most this many decoded images wait for the model, so memory stays flat however long the shard.
    io_threads = cfg.io_threads or io_threads_for(gpu, cfg.workers)
    decoded: queue.Queue = queue.Queue(maxsize=max(2, io_threads))
    items = iter(enumerate(shard.items))
    items_lock = threading.Lock()

    def row_for(job: _Job, **fields) -> dict:
        r = base_row | {"input_uri": storable(job.item.uri), "input_version": job.item.version,
                        "input_bytes": job.item.size, "input_sha256": job.sha256,
                        "seconds": time.perf_counter() - job.started}
        if job.size:
            r |= {"input_width": job.size[0], "input_height": job.size[1], "tiles": job.tiles}
        return r | fields

    def add_row(r: dict) -> None:
        with rows_lock:
            rows.append(r)

    def read_one(index: int, item: ApplyItem):
        job = _Job(index, item, time.perf_counter(), item.sha256)
        reason = unsafe_reason(item.rel)
        if reason:
            return job, f"unsafe_name: {reason}"
        try:
            data = storage.read_bytes(item.uri)
        except PixelmillError as exc:
            return job, f"unreadable: {exc}"
        except Exception as exc:
            if storage.is_transient(exc):
                raise
            return job, f"unreadable: {type(exc).__name__}: {exc}"
        job.sha256 = hashlib.sha256(data).hexdigest()
        try:
            img = decode_image(data, mode, cfg.max_pixels)
        except ImageError as exc:
            return job, str(exc)
        del data
        arr = np.asarray(img)
        img.close()
        job.size = (arr.shape[1], arr.shape[0])
        job.tiles = len(plan_tiles(arr.shape[0], arr.shape[1], tile, cfg.overlap))
        return job, arr

    failure: list[BaseException] = []

    def reader() -> None:
        while True:
            with items_lock:
                nxt = next(items, None)
            if nxt is None or failure:
                return
            try:
                decoded.put(read_one(*nxt))
            except BaseException as exc:  # a transient storage error outlasting its retries: fail the shard
                failure.append(exc)
                decoded.put(None)
                return

    def inputs(jobs: dict[int, _Job]) -> Iterator[tuple[int, torch.Tensor] | None]:
        for _ in range(len(shard.items)):
            try:
                msg = decoded.get_nowait()
            except queue.Empty:
                yield None  # nothing decoded yet: run the partial batches instead of waiting
                msg = decoded.get()
            if msg is None:
                raise failure[0]
            job, payload = msg
            if isinstance(payload, str):
                add_row(row_for(job, error=payload))
                continue
            jobs[job.index] = job
            if cfg.overlay and segmentation:
                job.image = payload
            with warnings.catch_warnings():  # PIL's arrays are read-only; the model only reads them
                warnings.simplefilter("ignore", UserWarning)
                hwc = torch.from_numpy(payload if payload.ndim == 3 else payload[:, :, None])
            yield job.index, hwc.permute(2, 0, 1)  # (C, H, W) uint8, a view

    def write_one(job: _Job, out: np.ndarray) -> None:
        rel = output_name(job.item, job.sha256, extension)
        uri = storage.join(shard.output, rel)
        overlay_uri = None
        try:
            if segmentation:
                data = encode(to_palette_image(out, classes), "png", cfg.quality)
            else:
                data = encode(Image.fromarray(out), cfg.format, cfg.quality)
            storage.write_bytes(uri, data)  # whole or not at all (a temporary name, or one PUT)
            if job.image is not None:
                overlay_uri = storage.join(shard.output, rel[: -len(".png")] + ".overlay.png")
                storage.write_bytes(overlay_uri, encode(Image.fromarray(overlay(job.image, out, classes)), "png", 0))
        except Exception as exc:
            if storage.is_transient(exc):
                raise
            add_row(row_for(job, error=f"{WRITE_FAILED}: {type(exc).__name__}: {exc}"))
            return
        add_row(row_for(job, status="ok", error=None, output_uri=uri, overlay_uri=overlay_uri,
                        output_width=out.shape[1], output_height=out.shape[0]))

    readers = [threading.Thread(target=reader, daemon=True, name=f"apply-read-{i}") for i in range(io_threads)]
    for t in readers:
        t.start()
    jobs: dict[int, _Job] = {}
    in_flight = threading.BoundedSemaphore(2 * io_threads)  # finished outputs waiting to be written
    with ThreadPoolExecutor(io_threads, thread_name_prefix="apply-write") as writers:
        futures = []
        forward = make_forward(model, dev)
        finish = to_indices if segmentation else to_rgb8
        for index, out in run_tiled(forward, inputs(jobs), tile, cfg.overlap, scale, batch, channels, finish,
                                    multiple, batch_pixels):
            in_flight.acquire()
            future = writers.submit(write_one, jobs.pop(index), out)
            future.add_done_callback(lambda _: in_flight.release())
            futures.append(future)
        for future in futures:
            future.result()  # a transient write error that outlasted its retries fails the shard
    for t in readers:
        t.join()
    if failure:
        raise failure[0]
    return commit_shard(Catalog(workspace), "predictions", shard.model.name, shard.shard_id, rows)


def resolve_model(workspace: str, ref: str) -> tuple[ModelVersion, str]:
    """The model version a reference names, and its task (restoration, colorize, segmentation)."""
    mv = registry.resolve(workspace, ref)
    return mv, model_task(registry.read_json(mv, "config.json"))


def apply_local(workspace: str, model_ref: str, source: str, output: str, cfg: ApplyConfig,
                run_id: str = "") -> ApplyPlan:
    """The whole apply without Prefect: plan, every shard, compact. For tests, benchmarks and scripts."""
    cfg = cfg.check()
    catalog = Catalog(workspace)
    mv, task = resolve_model(workspace, model_ref)
    plan = plan_apply(catalog, mv, task, source, output, cfg)
    for shard in plan.shards:
        apply_shard(shard, workspace, cfg, run_id)
    catalog.compact("predictions", mv.name)
    return plan
