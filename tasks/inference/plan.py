"""Apply's plan: which inputs a model version still owes an output, cut into shards.

    plan_apply(...)  turns the listing (or the images table's ok rows) into Arrow columns, skips inputs this
                     model version already did for this output (same bytes and version, or same sha256) by
                     matching them against the catalog's columns (`Ledger`), names each output, cuts shards.
                     Only the inputs to do become Python objects again, and only their names' owners are
                     looked up: a night with a thousand new files in a million costs no dict of the million.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pydantic import BaseModel, ConfigDict, Field

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.catalog import (
    RELEASE_ROWS,
    Catalog,
    Matches,
    all_distinct,
    extension_in,
    group_ids,
    listed_objects,
    listing_table,
    same,
)
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
    tta: bool = Field(False, description="geometric self-ensemble: each tile's output is the mean over its 8 "
                      "flips and quarter turns (8x the compute; gains in bench/README.md)")
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


@dataclass
class Ledger:
    """History in Arrow columns, what `plan_apply` matches a listing against: a Python object only for what it
    looks up (the inputs it keeps and their names), none per catalog row. The columns are the catalog read's
    own buffers; what is new per row is a collision key and two small integers per output."""

    done: pa.Table  # input_uri + DONE_COLUMNS of this version's attempts (input_sha256 all null when not read)
    uris: pa.ChunkedArray  # input_uri of every row read
    names: tuple[pa.ChunkedArray, pa.ChunkedArray]  # output_uri and overlay_uri of every row read
    named: pa.Table  # key (collision key), row (into uris), slot (0: output, 1: overlay): each ok row's outputs
    # under the root, in row order, an output before its overlay (the first row to name a key owns it)

    def history(self) -> History:
        """All of it as Python dicts."""
        history = History({}, {}, {})
        if self.done.num_rows:
            history.done = dict(zip(self.done["input_uri"].to_pylist(),
                                    zip(*(self.done[c].to_pylist() for c in DONE_COLUMNS), strict=True),
                                    strict=True))
        if self.named.num_rows:
            history.owners = self._owners(self.named)
            history.outputs = self._outputs(self.named)
        return history

    def _owners(self, named: pa.Table) -> dict[str, str]:
        """collision key -> the input of its first row, in the order keys first come."""
        keys = named["key"]
        if all_distinct(keys):
            first = np.arange(len(keys))
        else:
            _, first = np.unique(group_ids(named.select(["key"]), ["key"]), return_index=True)
            first.sort()  # in the order keys first come
        owned = named.take(pa.array(first, pa.int64()))
        return dict(zip(owned["key"].to_pylist(), self.uris.take(owned["row"]).to_pylist(), strict=True))

    def _outputs(self, named: pa.Table) -> dict[str, set[str]]:
        """input -> the names its rows wrote."""
        slot = named["slot"].to_numpy()
        names = pc.if_else(pa.array(slot == 0), self.names[0].take(named["row"]), self.names[1].take(named["row"]))
        outputs: dict[str, set[str]] = {}
        for uri, name in zip(self.uris.take(named["row"]).to_pylist(), names.to_pylist(), strict=True):
            outputs.setdefault(uri, set()).add(name)
        return outputs

    def done_rows(self, listed: pa.Table) -> np.ndarray:
        """For each listed input (`listing_table` of LISTED_INPUT): whether `is_done` says so of its URI's row."""
        match = Matches.of(listed, "uri", self.done, "input_uri")
        retry = pc.fill_null(pc.starts_with(self.done["error"], WRITE_FAILED), False).to_numpy(zero_copy_only=False)
        same_file = (same(match.listed("size"), match.cataloged("input_bytes"))
                     & same(match.listed("version"), match.cataloged("input_version")))
        if listed["sha256"].null_count < listed.num_rows:  # a data set's inputs: the same content is done too
            same_file |= pc.fill_null(pc.equal(match.listed("sha256"), match.cataloged("input_sha256")),
                                      False).to_numpy(zero_copy_only=False)
        done = np.zeros(listed.num_rows, bool)
        done[match.found] = ~retry[match.at] & same_file
        return done

    def owners_of(self, keys: Iterable[str]) -> dict[str, str]:
        """`History.owners`, of these collision keys alone."""
        wanted = pa.array(sorted(set(keys)), pa.string())
        return self._owners(self.named.filter(pc.is_in(self.named["key"], value_set=wanted)))

    def outputs_of(self, uris: Iterable[str]) -> dict[str, set[str]]:
        """`History.outputs`, of these inputs alone."""
        wanted = pa.array(sorted(set(uris)), pa.string())
        rows = pc.is_in(self.uris.take(self.named["row"]), value_set=wanted)
        return self._outputs(self.named.filter(rows))


DONE_COLUMNS = ("input_bytes", "input_version", "input_sha256", "error")
# A listed input's fields, in ApplyItem's order (`listed_objects` makes ApplyItems from them).
LISTED_INPUT = {"uri": pa.string(), "rel": pa.string(), "size": pa.int64(), "version": pa.string(),
                "sha256": pa.string()}


def _collision_keys(rels: pa.Array) -> pa.Array:
    """collision_key of each name: ASCII names lowered in Arrow (NFC and casefold change nothing else in them),
    the others by collision_key itself."""
    keys = pc.ascii_lower(rels)
    other = pc.invert(pc.string_is_ascii(rels))
    if pc.any(other).as_py():
        changed = [collision_key(v) for v in rels.filter(other).to_pylist()]
        keys = pc.replace_with_mask(keys, other, pa.array(changed, pa.string()))
    return keys


def output_ledger(catalog: Catalog, card: ModelCard, output: str, sha256: bool = True) -> Ledger:
    """What the catalog says about `output`, in Arrow columns (see `Ledger`). `sha256=False` leaves the inputs'
    content hashes unread (all null): a listing of files has none to compare them with."""
    columns = ["model_version", "input_uri", "input_bytes", "input_version", *(["input_sha256"] if sha256 else []),
               "error", "status", "output_uri", "overlay_uri"]
    t = catalog.read("predictions", card.name, filter=ds.field("output_root") == output, columns=columns)
    if not sha256:
        t = t.append_column("input_sha256", pa.nulls(t.num_rows, pa.string()))
    return _ledger(t, card, output)


def output_history(catalog: Catalog, card: ModelCard, output: str) -> History:
    """What the catalog says about `output`, as Python dicts (worked out in Arrow: `output_ledger`)."""
    return output_ledger(catalog, card, output).history()


def _ledger(t: pa.Table, card: ModelCard, output: str) -> Ledger:
    # this version's attempts
    mine = pc.fill_null(pc.equal(t["model_version"], card.version), False)
    done = t.select(["input_uri", *DONE_COLUMNS])
    if not pc.all(mine).as_py():
        done = done.filter(mine)
    # each ok row's outputs under the root, in row order, an output before its overlay
    prefix = output.rstrip("/") + "/"
    ok = pc.fill_null(pc.equal(t["status"], "ok"), False)
    place, row, slots, names = [], [], [], []
    for slot, column in enumerate(("output_uri", "overlay_uri")):
        under = pc.and_(ok, pc.fill_null(pc.starts_with(t[column], prefix), False)).to_numpy(zero_copy_only=False)
        at = np.nonzero(under)[0]
        place.append(at * 2 + slot)
        row.append(at)
        slots.append(np.full(len(at), slot, np.int8))
        names.append(pc.utf8_slice_codeunits(t[column].take(pa.array(at, pa.int64())), len(prefix)).combine_chunks())
    order = np.argsort(np.concatenate(place), kind="stable")
    keys = _collision_keys(pa.concat_arrays(names).take(pa.array(order, pa.int64())))
    named = pa.table({"key": keys, "row": pa.array(np.concatenate(row)[order], pa.int64()),
                      "slot": pa.array(np.concatenate(slots)[order], pa.int8())})
    del names
    if t.num_rows >= RELEASE_ROWS:  # the read's and these steps' buffers go back before the listing is made
        pa.default_memory_pool().release_unused()
    return Ledger(done, t["input_uri"], (t["output_uri"], t["overlay_uri"]), named)


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


def output_name(item: ApplyItem, extension, suffixed: bool = False) -> str:
    """An input's output name: the mirrored one, or (`suffixed`, when another input has it) the mirrored one with
    a suffix from its own name."""
    return mirror_relpath(item.rel, extension(item.rel), suffix_key=item.rel if suffixed else None)


def contested_keys(todo: list[ApplyItem], extension, overlay: bool = False) -> set[str]:
    """Every collision key `name_outputs` can look up for these inputs: whose owners it needs to know."""
    keys: set[str] = set()
    for item in todo:
        if not unsafe_reason(item.rel):
            for suffixed in (False, True):
                keys.update(collision_key(name) for name in with_overlay(output_name(item, extension, suffixed),
                                                                         overlay))
    return keys


def name_outputs(todo: list[ApplyItem], owners: dict[str, str], outputs: dict[str, set[str]], output: str,
                 extension, overlay: bool = False) -> list[ApplyItem]:
    """Each input's output path (see the module docstring): first come keeps the plain mirrored name. `owners`
    needs only the keys of `contested_keys(todo, ...)` and `outputs` only the inputs of `todo`."""
    taken = dict(owners)
    named: dict[str, ApplyItem] = {}
    for item in sorted(todo, key=lambda i: i.rel):
        if unsafe_reason(item.rel):
            continue  # an unsafe_name row: never written, so it takes no name
        me = storable(item.uri)
        rel = output_name(item, extension)
        if not all(taken.setdefault(collision_key(name), me) == me for name in with_overlay(rel, overlay)):
            rel = output_name(item, extension, suffixed=True)
            for name in with_overlay(rel, overlay):
                taken.setdefault(collision_key(name), me)
        new = storage.join(output, rel)
        mine = {new, new.rsplit(".", 1)[0] + OVERLAY_SUFFIX}  # rewritten in place, never stale
        stale = tuple(sorted(outputs.get(me, set()) - mine))
        named[item.uri] = ApplyItem(item.uri, item.rel, item.size, item.version, item.sha256, rel, stale)
    return [named.get(i.uri, i) for i in todo]


def is_done(item: ApplyItem, done: tuple | None) -> bool:
    """Done: a row for the same content, ok or a bad input's error (which rereading cannot fix). The rule for one
    input; `Ledger.done_rows` applies it to a whole listing in Arrow."""
    if done is None:
        return False
    size, version, sha, error = done
    if (error or "").startswith(WRITE_FAILED):  # the store's problem: worth another try
        return False
    return (item.sha256 is not None and item.sha256 == sha) or (size, version) == (item.size, item.version)


def plan_apply(catalog: Catalog, card: ModelCard, source: str, output: str, cfg: ApplyConfig) -> ApplyPlan:
    """Stream the inputs, keep what this model version has not done for this output, cut shards.

    The listing is matched against the catalog (`output_ledger`) in Arrow: only the inputs to do become Python
    objects again, and only their names' owners and their earlier outputs are looked up."""
    output = storage.normalize_url(output, archives=False)
    if storage.archive_protocol(output) or "::" in output:
        raise ConfigError(f"cannot write outputs into an archive: {output}", "give a folder or bucket prefix")
    # a data set's inputs carry their content hash, a listing's files do not (input_items)
    ledger = output_ledger(catalog, card, output, sha256=is_data_ref(source))
    plan = ApplyPlan(card, output, shards=[])
    settings = cfg.model_dump_json(include={"tile", "overlap", "format", "quality", "overlay", "max_pixels", "depth",
                                            "checks", "metadata"})
    settings += "|tta" if cfg.tta else ""  # only when on: the shards of runs without it keep their ids

    listed, originals = listing_table(input_items(source, catalog), LISTED_INPUT)
    image = extension_in(listed, "rel", IMAGE_EXTENSIONS, originals)
    plan.other_files = int((~image).sum())
    done = image & (False if cfg.force else ledger.done_rows(listed))
    plan.skipped = int(done.sum())
    rows = np.nonzero(image & ~done)[0]
    if cfg.limit is not None and len(rows) > cfg.limit:
        plan.limited = len(rows) - cfg.limit
        rows = rows[:cfg.limit]
    todo = listed_objects(listed, rows, ApplyItem, originals)
    del listed, originals
    kind = model_task(card.task).output
    extension = lambda rel: output_extension(rel, cfg, kind)  # noqa: E731
    overlay = cfg.overlay and kind == "mask"
    todo = name_outputs(todo, ledger.owners_of(contested_keys(todo, extension, overlay)),
                        ledger.outputs_of(storable(i.uri) for i in todo), output, extension, overlay=overlay)
    for chunk in chunks(todo, cfg.shard_size):
        key = [(i.uri, i.size, i.version, i.sha256, i.output_rel) for i in chunk]
        plan.shards.append(ApplyShard(card, output, shard_id(card.uri, output, settings, key), chunk))
    return plan
