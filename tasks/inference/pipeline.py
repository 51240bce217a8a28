"""The one inference path: readers -> tiled batches -> writers, over any predictor.

    apply_shard(...)    reader threads read and prepare -> the model runs batches of tiles -> writer threads
                        encode and write; each output is written whole, then the shard's catalog part records
                        them all
    predict_file(...)   the same tiles and batches over one image in memory (`enhance`, `segment`): one image
                        and a million images give the same pixels

Unsafe names (absolute, `..`, control characters) are `unsafe_name` rows: never read, nothing written. A bad
image is an error row of the images table's kinds. Nothing here knows the model's task: the predictor built
from the card prepares, finishes and encodes.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.core.images import OUTPUT_FORMATS, ImageError
from pixelmill.tasks.core.names import unsafe_reason
from pixelmill.tasks.core.shards import ShardResult, commit_shard
from pixelmill.tasks.inference.outputs import prediction_row, provenance
from pixelmill.tasks.inference.plan import WRITE_FAILED, ApplyConfig, ApplyItem, ApplyShard
from pixelmill.tasks.inference.predictors import Encoded, Prepared, build_predictor
from pixelmill.tasks.inference.runtime import Runtime, release_memory
from pixelmill.tasks.inference.tiling import plan_tiles, run_tiled


def predictor_for(card: ModelCard, cfg: ApplyConfig):
    return build_predictor(card, quality=cfg.quality, overlay=cfg.overlay, depth=cfg.depth, checks=cfg.checks,
                           metadata=cfg.metadata)


def format_of(rel: str) -> str:
    """The format an output's extension asks for (the plan chose the extension): PNG, JPEG, WEBP or TIFF."""
    return OUTPUT_FORMATS[rel.rsplit(".", 1)[-1].lower()]


def as_chw(pixels: np.ndarray) -> torch.Tensor:
    """(H, W[, C]) uint8 or uint16 -> a (C, H, W) view."""
    with warnings.catch_warnings():  # PIL's arrays are read-only; the model only reads them
        warnings.simplefilter("ignore", UserWarning)
        hwc = torch.from_numpy(pixels if pixels.ndim == 3 else pixels[:, :, None])
    return hwc.permute(2, 0, 1)


def tiled(runtime: Runtime, predictor, images, scale: int):
    """(key, finished output) for each (key, (C, H, W) uint8 tensor) of `images` (None: nothing ready yet)."""
    return run_tiled(runtime.forward, images, runtime.tile, runtime.overlap, scale, runtime.batch, predictor.channels,
                     predictor.finish, runtime.multiple, runtime.batch_pixels, runtime.grid)


def predict_file(card: ModelCard, data: bytes, cfg: ApplyConfig, name: str, input_uri: str = "",
                 run_id: str = "") -> tuple[Prepared, np.ndarray, Encoded]:
    """One image's bytes through the model as apply runs it, written as the output file `name` asks (its
    extension): (its input, the result, the encoded files)."""
    predictor = predictor_for(card, cfg)
    prepared = predictor.prepare(data, cfg.max_pixels)
    runtime = Runtime.of(card, cfg)
    [(_, out)] = list(tiled(runtime, predictor, [(0, as_chw(prepared.pixels))], card.scale))
    fields = provenance(card, input_uri.rsplit("/", 1)[-1], input_uri, hashlib.sha256(data).hexdigest(), run_id)
    return prepared, out, predictor.encode(out, prepared, format_of(name), fields)


@dataclass
class _Job:
    index: int
    item: ApplyItem
    started: float
    sha256: str | None = None
    size: tuple[int, int] | None = None
    tiles: int = 0
    prepared: Prepared | None = None  # what the encoder needs besides the output (alpha, overlay image)


def apply_shard(shard: ApplyShard, workspace: str, cfg: ApplyConfig, run_id: str = "") -> ShardResult:
    """Run the model over a shard's inputs, write each output whole, then the shard's catalog part."""
    card = shard.model
    predictor = predictor_for(card, cfg)
    runtime = Runtime.of(card, cfg)
    base_row = {"model": card.name, "model_version": card.version, "task": card.task, "output_root": shard.output,
                "run_id": run_id, "created_at": datetime.now(UTC), "status": "error"}
    rows: list[dict] = []
    rows_lock = threading.Lock()
    # Bounded: at most this many decoded images wait for the model, so memory stays flat however long the shard.
    io_threads = runtime.io_threads
    decoded: queue.Queue = queue.Queue(maxsize=max(2, io_threads))
    items = iter(enumerate(shard.items))
    items_lock = threading.Lock()

    def row_for(job: _Job, **fields) -> dict:
        return prediction_row(base_row, job.item.uri, job.item.version, job.item.size, job.sha256, job.started,
                              job.size, job.tiles, **fields)

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
            prepared = predictor.prepare(data, cfg.max_pixels)
        except ImageError as exc:
            return job, str(exc)
        del data
        height, width = prepared.pixels.shape[:2]
        job.size = (width, height)
        job.tiles = len(plan_tiles(height, width, runtime.tile, runtime.overlap, runtime.grid))
        return job, prepared

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
            pixels, payload.pixels = payload.pixels, None  # the tiles hold a view; the job keeps the rest
            job.prepared = payload
            yield job.index, as_chw(pixels)

    def write_one(job: _Job, out: np.ndarray) -> None:
        rel = job.item.output_rel
        stem = rel.rsplit(".", 1)[0]
        uris: dict[str, str] = {}
        try:
            fields = provenance(card, job.item.rel, job.item.uri, job.sha256, run_id)
            encoded = predictor.encode(out, job.prepared, format_of(rel), fields)
            for kind, (suffix, data) in encoded.files.items():
                uri = storage.join(shard.output, rel if kind == "output" else stem + suffix)
                storage.write_bytes(uri, data)  # whole or not at all (a temporary name, or one PUT)
                uris[f"{kind}_uri"] = uri
            for uri in job.item.stale:  # the same input's output under an older name: the new one replaces it
                storage.remove(uri)
        except Exception as exc:
            if storage.is_transient(exc):
                raise
            add_row(row_for(job, error=f"{WRITE_FAILED}: {type(exc).__name__}: {exc}"))
            return
        add_row(row_for(job, status="ok", error=None, **uris, output_width=out.shape[1], output_height=out.shape[0],
                        output_sha256=hashlib.sha256(encoded.files["output"][1]).hexdigest(),
                        notes="; ".join(dict.fromkeys(encoded.notes)) or None, **encoded.columns))

    readers = [threading.Thread(target=reader, daemon=True, name=f"apply-read-{i}") for i in range(io_threads)]
    for t in readers:
        t.start()
    jobs: dict[int, _Job] = {}
    in_flight = threading.BoundedSemaphore(2 * io_threads)  # finished outputs waiting to be written
    with ThreadPoolExecutor(io_threads, thread_name_prefix="apply-write") as writers:
        futures = []
        for index, out in tiled(runtime, predictor, inputs(jobs), card.scale):
            in_flight.acquire()
            future = writers.submit(write_one, jobs.pop(index), out)
            future.add_done_callback(lambda _: in_flight.release())
            futures.append(future)
        for future in futures:
            future.result()  # a transient write error that outlasted its retries fails the shard
    for t in readers:
        t.join()
    release_memory()
    if failure:
        raise failure[0]
    return commit_shard(Catalog(workspace), "predictions", card.name, shard.shard_id, rows)
