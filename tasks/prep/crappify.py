"""Crappify, the pure part: ok images of a data set -> (HR target, LR input) pairs and `pairs` rows.

Layout of a paired set under the workspace (mirrored names, so hr/x.png pairs with lr/x.png; the stem
comes from `names.output_stem`, which keeps ordinary names and makes odd or long ones safe):

    datasets/{set}/{split}/hr/{stem}-{sha10}.png        (only where the HR target cannot refer to the source)
    datasets/{set}/{split}/lr/{stem}-{sha10}.png|.jpg
    datasets/{set}/{split}/mask/{stem}-{sha10}.png      (segmentation sets: the mask at the LR's size)

The HR target refers to the source image instead of copying it (`hr_kind` "source", tasks/core/pairs.py) when the
recipe's target steps leave the decoded source as it is (lesson7) or only crop it (modcrop: sr-x2, sr-x4,
realistic): the row records the source's sha256 and the crop, and readers decode it by the rules used here. It
is written (`hr_kind` "copy") when the target steps do anything else (a resize, a degradation), and for HEIF and
AVIF sources, whose decoders are plugins that are slow to run every epoch and may change pixels between versions.
Either way the pixels a reader gets are the same, so the recipe hash (which names pixels, not storage) is kept.

Every random draw comes from `derive_seed(image sha256, recipe hash, seed)`, so a pair is the same bytes
on every run, on any worker, whatever the shard size or worker count.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import pyarrow.dataset as ds
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import ConfigError, StorageError
from pixelmill.tasks.core.images import DEFAULT_MAX_PIXELS, ImageFacts, normalize_mode, open_image, open_plain_png
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.names import check_name, output_stem
from pixelmill.tasks.core.pairs import COPY, SOURCE
from pixelmill.tasks.core.shards import ShardResult, auto_shard_size, chunks, commit_shard, error_row, shard_id
from pixelmill.tasks.prep.degrade import ModCrop, derive_seed
from pixelmill.tasks.prep.recipes import Recipe, apply_recipe, encode_png, get_recipe

Split = Literal["train", "valid", "test", "all"]
WRITE_FAILED = "write_failed"  # the error kind of a pair whose files could not be written


class CrappifyConfig(BaseModel):
    """How to make a paired set. Every field has a default that runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recipe: str = Field("lesson7", description="a shipped recipe name (`pixelmill recipes`) or a YAML file")
    split: Split = "all"
    name: str | None = Field(None, description="paired set name (default: {dataset}-{recipe})")
    seed: int = Field(0, description="global seed, mixed with each image's hash and the recipe's hash")
    shard_size: int | None = Field(None, ge=1, le=10_000,
                                   description="images per task (default: auto_shard_size)")
    workers: int = Field(default_factory=lambda: usable_cores(), ge=1, le=512,
                         description="shards in flight at once, each on one worker: a process of this machine's "
                                     "pool (default: its cores), or a Dask worker")
    threads: int = Field(1, ge=1, le=64, description="threads inside a process making pairs (more overlap the "
                                                     "reads and writes of slow storage with the image work)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)

    def load_recipe(self) -> Recipe:
        try:
            return get_recipe(self.recipe)
        except ValueError as exc:  # RecipeError: already names the bad field or the valid names
            raise ConfigError(str(exc), "`pixelmill recipes` lists the shipped recipes") from None


@dataclass(frozen=True)
class PairJob:
    image_uri: str
    image_sha256: str
    split: str
    mask_uri: str | None
    dataset: str
    bytes: int | None = None  # the source's size and version as ingest listed them (recorded with a reference)
    source_version: str | None = None


@dataclass(frozen=True)
class CrappifyShard:
    set_name: str
    shard_id: str
    recipe: Recipe
    seed: int
    jobs: tuple[PairJob, ...]


@dataclass
class CrappifyPlan:
    set_name: str
    recipe: Recipe
    shards: list[CrappifyShard]
    existing: int  # pairs already made by an earlier run with the same recipe and seed


def pair_id(image_sha256: str, recipe_hash: str, seed: int) -> str:
    return hashlib.sha256(f"{image_sha256}:{recipe_hash}:{seed}".encode()).hexdigest()[:20]


def pair_name(job: PairJob) -> str:
    """Readable and unique: the source's stem plus a piece of its hash (two folders may share a stem)."""
    return output_stem(job.image_uri.split("::")[0], job.image_sha256)


def select_images(catalog: Catalog, dataset: str, split: Split) -> list[PairJob]:
    """The data set's ok, non-duplicate images (duplicates would only repeat pairs), in catalog order."""
    filt = (ds.field("status") == "ok") & ds.field("duplicate_of").is_null()
    if split != "all":
        filt &= ds.field("split") == split
    t = catalog.read("images", dataset, columns=["uri", "sha256", "split", "mask_uri", "dataset", "bytes",
                                                 "source_version"], filter=filt)
    jobs = [PairJob(*row) for row in zip(*(t[c].to_pylist() for c in t.column_names), strict=True)]
    return sorted(jobs, key=lambda j: j.image_uri)


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def plan_crappify(catalog: Catalog, dataset: str, cfg: CrappifyConfig) -> CrappifyPlan:
    recipe = cfg.load_recipe()
    set_name = check_name(cfg.name or f"{dataset}-{recipe.name}", "paired set name")
    jobs = select_images(catalog, dataset, cfg.split)
    if not jobs:
        raise ConfigError(f"no ok images in data set {dataset!r} (split {cfg.split}) in {catalog.workspace}",
                          "run `pixelmill ingest` first, or check --dataset, --split and --workspace")
    made = catalog.read("pairs", set_name, columns=["pair_id", "recipe_hash", "status"])
    other_recipes = set(made["recipe_hash"].to_pylist()) - {recipe.recipe_hash}
    if other_recipes:
        raise ConfigError(f"paired set {set_name!r} was made with another recipe definition "
                          f"({', '.join(sorted(other_recipes))}, now {recipe.recipe_hash})",
                          "pass a new --name, or delete the set's folder and catalog part to remake it")
    # error rows are tried again: a full disk or a lost permission is often fixed by the next run
    done = {p for p, status in zip(made["pair_id"].to_pylist(), made["status"].to_pylist(), strict=True)
            if status == "ok"}
    todo = [j for j in jobs if pair_id(j.image_sha256, recipe.recipe_hash, cfg.seed) not in done]
    size = cfg.shard_size or auto_shard_size(len(todo), cfg.workers)
    shards = [CrappifyShard(set_name, shard_id(set_name, recipe.recipe_hash, cfg.seed, [j.image_sha256 for j in chunk]),
                            recipe, cfg.seed, chunk) for chunk in chunks(todo, size)]
    return CrappifyPlan(set_name, recipe, shards, existing=len(jobs) - len(todo))


# Formats whose decoder is a plugin (pillow-heif, libavif): slow to run each epoch, and a new version may decode
# other pixels; their HR targets are written once as PNG instead of referenced.
UNREFERENCED_FORMATS = frozenset({"HEIF", "AVIF"})


def hr_crop(recipe: Recipe, facts: ImageFacts, hr: Image.Image) -> list[int] | None | bool:
    """How the HR target relates to the decoded source: None (it is the source), a crop box [0, 0, w, h] (modcrop
    keeps the top-left: any number of them is one crop), or False when a reference cannot say it (write it)."""
    if facts.format in UNREFERENCED_FORMATS or not all(isinstance(step, ModCrop) for step in recipe.target):
        return False
    return None if hr.size == (facts.width, facts.height) else [0, 0, hr.width, hr.height]


def _hr_bytes(data: bytes, facts: ImageFacts, recipe: Recipe, hr: Image.Image) -> bytes:
    """Reuse the source file as the HR target when it already is exactly that PNG (saves an encode)."""
    unchanged = facts.format == "PNG" and facts.mode == hr.mode and not facts.rotated and not recipe.target
    return data if unchanged else encode_png(hr)


def _hr_row(job: PairJob, data: bytes, facts: ImageFacts, recipe: Recipe, hr: Image.Image,
            copy_uri: str) -> tuple[dict, bytes | None]:
    """The row's hr_* columns, and the HR file's bytes when one must be written (None: the source is referenced)."""
    crop = hr_crop(recipe, facts, hr)
    if crop is not False:
        return {"hr_uri": job.image_uri, "hr_kind": SOURCE, "hr_sha256": job.image_sha256, "hr_crop": crop,
                "hr_bytes": job.bytes, "hr_version": job.source_version}, None
    hr_bytes = _hr_bytes(data, facts, recipe, hr)
    return {"hr_uri": copy_uri, "hr_kind": COPY, "hr_sha256": hashlib.sha256(hr_bytes).hexdigest(),
            "hr_crop": None, "hr_bytes": None, "hr_version": None}, hr_bytes


def _mask_bytes(mask_uri: str, hr_size: tuple[int, int], lr_size: tuple[int, int], max_pixels: int) -> bytes:
    """The mask cropped like the target (modcrop keeps the top-left) and resized like the input.

    Nearest neighbour and no mode conversion: label values (or palette indices) must survive exactly.
    """
    mask, _ = open_image(storage.read_bytes(mask_uri), max_pixels)
    mask = mask.crop((0, 0, *hr_size))
    if mask.size != lr_size:
        mask = mask.resize(lr_size, Image.Resampling.NEAREST)
    return encode_png(mask)


def crappify_one(job: PairJob, recipe: Recipe, global_seed: int, set_name: str, set_root: str, max_pixels: int,
                 now: datetime) -> dict:
    """Make and write one pair; a file that cannot be read, degraded or written becomes an error row."""
    seed = derive_seed(job.image_sha256, recipe.recipe_hash, global_seed)
    row = {"pair_id": pair_id(job.image_sha256, recipe.recipe_hash, global_seed), "set_name": set_name,
           "dataset": job.dataset, "image_uri": job.image_uri, "image_sha256": job.image_sha256,
           "split": job.split, "recipe": recipe.name, "recipe_hash": recipe.recipe_hash, "seed": seed,
           "status": "error", "created_at": now}
    try:
        folder = storage.join(set_root, job.split)
        name = pair_name(job)
        data = storage.read_bytes(job.image_uri)
        if job.bytes is not None and len(data) != job.bytes:
            # Not the file ingest read. A free check: hashing here would cost ~4% of a pair; a change that keeps
            # the size is caught where the bytes are used (a reference's sha256 is checked by every reader).
            return row | {"error": f"source_changed: {job.image_uri} is not the file ingest read ({len(data)} "
                                   f"bytes, then {job.bytes}): ingest the data set again"}
        # A plain 8-bit PNG (most photo archives) through libpng: the same pixels for less CPU; the rest, Pillow.
        src, facts = open_plain_png(data, max_pixels) or open_image(data, max_pixels)
        result = apply_recipe(recipe, normalize_mode(src), seed, encode_hr=False)
        hr, hr_bytes = _hr_row(job, data, facts, recipe, result.hr, storage.join(folder, "hr", f"{name}.png"))
        mask = _mask_bytes(job.mask_uri, result.hr.size, result.lr.size, max_pixels) if job.mask_uri else None
    except Exception as exc:  # bad input or a degradation that cannot handle it: a row, not a crash
        return row | {"error": f"{type(exc).__name__}: {exc}"}
    lr_ext = "jpg" if recipe.lr_format == "jpeg" else "png"
    made = hr | {"lr_uri": storage.join(folder, "lr", f"{name}.{lr_ext}"),
                 "mask_uri": storage.join(folder, "mask", f"{name}.png") if mask else None}
    # Outputs first, catalog row last (by the caller): a crash never leaves a row without its files.
    try:
        if hr_bytes is not None:
            storage.write_bytes(made["hr_uri"], hr_bytes)
        storage.write_bytes(made["lr_uri"], result.lr_bytes)
        if mask:
            storage.write_bytes(made["mask_uri"], mask)
    except Exception as exc:  # this pair's name, path or file: its row (crappify_shard checks the store)
        return row | {"error": error_row(exc, WRITE_FAILED)}
    return row | made | {"params": json.dumps(result.params, sort_keys=True), "status": "ok", "error": None,
                         "hr_width": result.hr.width, "hr_height": result.hr.height,
                         "lr_width": result.lr.width, "lr_height": result.lr.height}


def check_writable(folder: str) -> None:
    """Fail when `folder` takes no file at all: then the pairs' write failures are the store's, not theirs.

    Rows would record a store-wide fault as permanent per-image errors; a failed shard is retried instead.
    """
    probe = storage.join(folder, ".write-probe")
    try:
        storage.write_bytes(probe, b"")
    except Exception as exc:
        raise StorageError(f"cannot write to {folder}: {type(exc).__name__}: {exc}",
                           "check the workspace's permissions, free space and credentials") from exc
    storage.remove(probe)


_pools: dict[tuple, ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()


def image_pool(processes: int) -> ProcessPoolExecutor:
    """One pool per process, for its lifetime: started once (about a second), shared by all shards in flight.

    forkserver, not fork: children start from a clean process instead of a copy of Prefect's threads and
    locks. Processes, not threads: about 4 ms of each image's work is Python that holds the GIL.
    Children fork from the forkserver, whose environment is the one it started with: they get today's storage
    settings (endpoint, credentials, retry budget), and a change of those starts a new pool.
    """
    settings = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "PIXELMILL_"))))
    with _pools_lock:
        pool = _pools.get((processes, settings))
        if pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["pixelmill.tasks.prep.crappify"])
            pool = _pools[processes, settings] = ProcessPoolExecutor(
                processes, mp_context=context, initializer=_use_env, initargs=(dict(settings),))
        return pool


def start_pool(processes: int) -> None:
    """Start the pool's processes now, so that their start-up (about a second) overlaps other work."""
    pool = image_pool(processes)
    for _ in range(processes):  # a pool starts one process per job submitted while none is idle
        pool.submit(int)


def close_pools() -> None:
    """Stop this process's pools; the next shard starts a new one (benchmarks time both sides cold)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=True)


def _forget_pool(pool: ProcessPoolExecutor) -> None:
    with _pools_lock:
        for key, value in list(_pools.items()):
            if value is pool:
                del _pools[key]


def _use_env(env: dict) -> None:
    os.environ.update(env)


def crappify_shard(shard: CrappifyShard, workspace: str, cfg: CrappifyConfig, processes: int = 0) -> ShardResult:
    """Make a shard's pairs, then write its catalog part.

    processes >= 1: the whole shard, catalog part included, runs in one child of this machine's shared pool of
    `processes`, so this process only waits (it sends one small job per shard and gets back one count) and a
    child that finishes a shard takes the next queued one at once. Otherwise the shard runs here on cfg.threads
    threads (a Dask worker is already a process of its own). memory:// storage stays in this process: other
    processes cannot see it.
    """
    in_memory = any(storage.normalize_url(u).startswith("memory://")
                    for u in (workspace, *(j.image_uri for j in shard.jobs)))
    if processes < 1 or in_memory:
        return make_shard(shard, workspace, cfg)
    pool = image_pool(processes)
    try:
        return pool.submit(make_shard, shard, workspace, cfg).result()
    except BrokenProcessPool:  # a child died (OOM killer, kill -9): the task's retry gets a fresh pool
        _forget_pool(pool)
        raise


def make_shard(shard: CrappifyShard, workspace: str, cfg: CrappifyConfig) -> ShardResult:
    """The shard's pairs on cfg.threads threads (reads and writes overlap the image work), then its part."""
    now = datetime.now(UTC)
    set_root = Layout.of(workspace).paired_set(shard.set_name)
    make = functools.partial(crappify_one, recipe=shard.recipe, global_seed=shard.seed, set_name=shard.set_name,
                             set_root=set_root, max_pixels=cfg.max_pixels, now=now)
    if cfg.threads > 1:
        with ThreadPoolExecutor(cfg.threads) as pool:
            rows = list(pool.map(make, shard.jobs))
    else:
        rows = [make(job) for job in shard.jobs]
    if any((r["error"] or "").startswith(WRITE_FAILED) for r in rows):
        check_writable(set_root)
    return commit_shard(Catalog(workspace), "pairs", shard.set_name, shard.shard_id, rows)
