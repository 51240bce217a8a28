"""Apply's plan: which inputs a model version still owes an output, cut into shards.

    plan_apply(...)  streams the listing (or the images table's ok rows), skips inputs this model version
                     already did for this output (same bytes and version, or same sha256), names each output,
                     cuts shards

Outputs mirror their inputs' relative names (`2019/photo.jpg` -> `2019/photo.png`, tasks/core/names.py). Where
two inputs would get one name (`a.jpg` and `a.tif` in one folder, names that clean alike or differ only in case),
the first comes keeps it: the input that already owns it in the catalog, else the first by name; the others get a
suffix from their own name, so it never changes. An edited input gets its own name again, replacing its output;
an output it had under another name (another --format, an older naming rule) is deleted once the new one is
written (`ApplyItem.stale`).

A shard's id hashes the model version, the output, the settings that change pixels and its inputs: a rerun
after a crash (kill -9 included) redoes the unrecorded shards, rewriting the same files atomically, and
replaces the same catalog parts. The plan and its shards carry the model's card (small, no torch): a worker
loads the weights by card.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pydantic import BaseModel, ConfigDict, Field

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.catalog import Catalog, all_distinct, gc_paused, group_ids
from pixelmill.tasks.core.errors import ConfigError
from pixelmill.tasks.core.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, OUTPUT_FORMATS
from pixelmill.tasks.core.model_tasks import model_task
from pixelmill.tasks.core.names import collision_key, mirror_relpath, storable, unsafe_reason
from pixelmill.tasks.core.shards import chunks, shard_id
from pixelmill.tasks.core.storage import FileInfo
from pixelmill.tasks.core.tables import is_data_ref, parse_data_ref

WRITE_FAILED = "write_failed"
OVERLAY_SUFFIX = ".overlay.png"  # segmentation's --overlay file, beside the mask
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "tiff": "tif"}  # --format -> the outputs' extension


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
    format: Literal["png", "jpeg", "webp", "tiff", "same"] = Field(
        "png", description="image outputs' format; same: the input's own where pixelmill writes it (PNG, JPEG, "
        "WebP, TIFF), PNG for the rest (BMP, GIF, HEIC, AVIF)")
    depth: Literal["auto", "8", "16"] = Field("auto", description="bits per channel of image outputs; auto: the "
                                              "input's (a 16-bit master stays 16-bit where the format holds it)")
    checks: bool = Field(True, description="check each output against its input (colour drift, NIQE, clipping) "
                                           "and flag the suspicious ones")
    metadata: bool = Field(True, description="copy the input's EXIF, XMP and IPTC into its output (off: only the "
                                             "ICC profile, the DPI and pixelmill's provenance, e.g. to drop GPS)")
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
    output_rel: str = ""  # the output's path under the output root (set by the plan)
    stale: tuple[str, ...] = ()  # this input's earlier outputs under other names: deleted once the new one is written


@dataclass(frozen=True)
class ApplyShard:
    model: ModelCard
    output: str
    shard_id: str
    items: tuple[ApplyItem, ...]


@dataclass
class ApplyPlan:
    model: ModelCard
    output: str
    shards: list[ApplyShard]
    skipped: int = 0  # already done by this model version for this output
    other_files: int = 0  # not an image's extension
    limited: int = 0  # left for a later run by --limit

    @property
    def task(self) -> str:
        return self.model.task

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
    """Every file of a folder, bucket or archive (streamed), or a data set's ok images (`images:NAME`; the old
    spelling `dataset:NAME` too)."""
    if is_data_ref(source):
        yield from dataset_items(catalog, parse_data_ref(source, ("images",)).name)
        return
    info: FileInfo
    for info in storage.iter_files(source):
        yield ApplyItem(info.uri, info.rel, info.size, info.version)


@dataclass
class History:
    """What the catalog says about one output root: this version's attempts, and who owns which output name."""

    done: dict[str, tuple]  # input_uri -> (bytes, version, sha256, error) of this model version's last attempt
    owners: dict[str, str]  # collision_key(output path) -> input_uri, for every version's ok outputs
    outputs: dict[str, set[str]]  # input_uri -> the output (and overlay) URIs any version wrote for it


def _collision_keys(rels: pa.Array) -> pa.Array:
    """collision_key of each name: ASCII names lowered in Arrow (NFC and casefold change nothing else in them),
    the others by collision_key itself."""
    keys = pc.ascii_lower(rels)
    other = pc.invert(pc.string_is_ascii(rels))
    if pc.any(other).as_py():
        changed = [collision_key(v) for v in rels.filter(other).to_pylist()]
        keys = pc.replace_with_mask(keys, other, pa.array(changed, pa.string()))
    return keys


def output_history(catalog: Catalog, card: ModelCard, output: str) -> History:
    """What the catalog says about `output`, worked out in Arrow and numpy: Python objects only for the dicts
    handed back."""
    columns = ["model_version", "input_uri", "input_bytes", "input_version", "input_sha256", "error", "status",
               "output_uri", "overlay_uri"]
    with gc_paused():  # the table is _history's alone: it lets go of what it no longer needs
        return _history(catalog.read("predictions", card.name, filter=ds.field("output_root") == output,
                                     columns=columns), card, output)


def _history(t: pa.Table, card: ModelCard, output: str) -> History:
    history = History({}, {}, {})
    if t.num_rows == 0:
        return history
    # Arrow first. This version's attempts:
    mine = np.nonzero(pc.fill_null(pc.equal(t["model_version"], card.version), False)
                      .to_numpy(zero_copy_only=False))[0]
    done = t.select(["input_bytes", "input_version", "input_sha256", "error"])
    done = done if len(mine) == t.num_rows else done.take(pa.array(mine, pa.int64()))
    # each ok row's outputs under the root, in row order, an output before its overlay: the first row to name a
    # collision key owns it
    prefix = output.rstrip("/") + "/"
    ok = pc.fill_null(pc.equal(t["status"], "ok"), False)
    place, row, names = [], [], []
    for slot, column in enumerate(("output_uri", "overlay_uri")):
        under = pc.and_(ok, pc.fill_null(pc.starts_with(t[column], prefix), False)).to_numpy(zero_copy_only=False)
        at = np.nonzero(under)[0]
        place.append(at * 2 + slot)
        row.append(at)
        names.append(t[column].take(pa.array(at, pa.int64())).combine_chunks())
    order = np.argsort(np.concatenate(place), kind="stable")
    row = np.concatenate(row)[order]
    names = pa.concat_arrays(names).take(pa.array(order, pa.int64()))
    keys = _collision_keys(pc.utf8_slice_codeunits(names, len(prefix)))
    if all_distinct(keys):
        first = np.arange(len(keys))
    else:
        _, first = np.unique(group_ids(pa.table({"key": keys}), ["key"]), return_index=True)
        first.sort()  # in the order keys first come
    owned = keys.take(pa.array(first, pa.int64()))
    uri_column = t["input_uri"]
    one_each = all_distinct(uri_column.take(pa.array(row, pa.int64())))  # no input with two outputs
    del t, keys, ok  # what the Python objects below are made from stays; the rest goes back to the system
    pa.default_memory_pool().release_unused()

    # Then the Python objects, made once: the three dicts share the input URIs' strings.
    uris = uri_column.to_pylist()
    if len(mine):
        history.done = dict(zip(uris if len(mine) == len(uris) else [uris[i] for i in mine],
                                zip(*(done[c].to_pylist() for c in done.column_names), strict=True), strict=True))
    del done
    if len(row) == 0:
        return history
    history.owners = dict(zip(owned.to_pylist(), [uris[i] for i in row[first]], strict=True))
    named = names.to_pylist()
    if one_each:  # one output per input (no overlays, one version's rows): a set of one each
        history.outputs = {uris[i]: {name} for i, name in zip(row.tolist(), named, strict=True)}
    else:
        for i, name in zip(row.tolist(), named, strict=True):
            history.outputs.setdefault(uris[i], set()).add(name)
    return history


def output_extension(rel: str, cfg: ApplyConfig, output_kind: str) -> str:
    """A mask is a PNG; an image gets --format's extension, or with `same` its input's own where it is written."""
    if output_kind == "mask":
        return "png"
    if cfg.format == "same":
        ext = posixpath.splitext(rel)[1][1:]
        return ext if ext.lower() in OUTPUT_FORMATS else "png"
    return EXTENSIONS[cfg.format]


def with_overlay(rel: str, overlay: bool) -> list[str]:
    """The files an output is: itself, and a segmentation overlay beside it (which another input's name can equal)."""
    return [rel, rel.rsplit(".", 1)[0] + OVERLAY_SUFFIX] if overlay else [rel]


def name_outputs(todo: list[ApplyItem], owners: dict[str, str], outputs: dict[str, set[str]], output: str,
                 extension, overlay: bool = False) -> list[ApplyItem]:
    """Each input's output path (see the module docstring): first come keeps the plain mirrored name."""
    taken = dict(owners)
    named: dict[str, ApplyItem] = {}
    for item in sorted(todo, key=lambda i: i.rel):
        if unsafe_reason(item.rel):
            continue  # an unsafe_name row: never written, so it takes no name
        me = storable(item.uri)
        rel = mirror_relpath(item.rel, extension(item.rel))
        if not all(taken.setdefault(collision_key(name), me) == me for name in with_overlay(rel, overlay)):
            rel = mirror_relpath(item.rel, extension(item.rel), suffix_key=item.rel)
            for name in with_overlay(rel, overlay):
                taken.setdefault(collision_key(name), me)
        new = storage.join(output, rel)
        mine = {new, new.rsplit(".", 1)[0] + OVERLAY_SUFFIX}  # rewritten in place, never stale
        stale = tuple(sorted(outputs.get(me, set()) - mine))
        named[item.uri] = ApplyItem(item.uri, item.rel, item.size, item.version, item.sha256, rel, stale)
    return [named.get(i.uri, i) for i in todo]


def is_done(item: ApplyItem, done: tuple | None) -> bool:
    """Done: a row for the same content, ok or a bad input's error (which rereading cannot fix)."""
    if done is None:
        return False
    size, version, sha, error = done
    if (error or "").startswith(WRITE_FAILED):  # the store's problem: worth another try
        return False
    return (item.sha256 is not None and item.sha256 == sha) or (size, version) == (item.size, item.version)


def plan_apply(catalog: Catalog, card: ModelCard, source: str, output: str, cfg: ApplyConfig) -> ApplyPlan:
    """Stream the inputs, keep what this model version has not done for this output, cut shards."""
    output = storage.normalize_url(output, archives=False)
    if storage.archive_protocol(output) or "::" in output:
        raise ConfigError(f"cannot write outputs into an archive: {output}", "give a folder or bucket prefix")
    history = output_history(catalog, card, output)
    done = {} if cfg.force else history.done
    plan = ApplyPlan(card, output, shards=[])
    settings = cfg.model_dump_json(include={"tile", "overlap", "format", "quality", "overlay", "max_pixels", "depth",
                                            "checks", "metadata"})
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
    kind = model_task(card.task).output
    todo = name_outputs(todo, history.owners, history.outputs, output, lambda rel: output_extension(rel, cfg, kind),
                        overlay=cfg.overlay and kind == "mask")
    for chunk in chunks(todo, cfg.shard_size):
        key = [(i.uri, i.size, i.version, i.sha256, i.output_rel) for i in chunk]
        plan.shards.append(ApplyShard(card, output, shard_id(card.uri, output, settings, key), chunk))
    return plan
