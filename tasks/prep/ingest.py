"""Ingest, the pure part: plan shards from a listing, turn a shard of files into catalog rows, tidy a data set.

No Prefect here: flows/ingest.py maps `ingest_shard` over the plan and calls `finalize_dataset` at the end.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pixelmill.tasks.core import catalog as catalog_module
from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import (
    Catalog,
    Matches,
    all_distinct,
    best_of_groups,
    exact_in_python,
    extension_in,
    group_ids,
    listed_objects,
    listing_table,
    rank_values,
    same,
)
from pixelmill.tasks.core.errors import StorageError
from pixelmill.tasks.core.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, open_image
from pixelmill.tasks.core.names import check_name, storable, unsafe_reason
from pixelmill.tasks.core.shards import ShardResult, auto_shard_size, chunks, commit_shard, error_row, shard_id
from pixelmill.tasks.core.storage import FileInfo

SPLITS = ("train", "valid", "test")


class IngestConfig(BaseModel):
    """How to ingest one source. Every field has a default that runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    masks: str | None = Field(None, description="mask folder URL (same relative names) or a name pattern "
                                                "with {stem}, e.g. '{stem}_P.png'")
    shard_size: int | None = Field(None, ge=1, le=100_000,
                                   description="files per task (default: about 4 per worker, 16 to 1024 each)")
    split_fractions: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train, valid, test")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    extensions: tuple[str, ...] = tuple(sorted(IMAGE_EXTENSIONS))
    # Each shard already runs io_threads threads: 4 shards at once keep a large plan from starting thousands.
    workers: int = Field(4, ge=1, le=512, description="shards in flight at once, each on one thread")
    io_threads: int = Field(8, ge=1, le=128, description="threads reading and decoding inside a shard")
    force: bool = Field(False, description="re-read files even when their size and version are unchanged")

    @field_validator("split_fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"split fractions {v} must be >= 0 and sum to 1")
        return v

    @field_validator("extensions")
    @classmethod
    def _dotted_lowercase(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted({("." + e.lstrip(".")).lower() for e in v}))

    @model_validator(mode="after")
    def _pattern_has_stem(self) -> IngestConfig:
        if self.masks and "{" in self.masks and "{stem}" not in self.masks:
            raise ValueError(f"mask pattern {self.masks!r} must contain {{stem}}")
        return self


@dataclass(frozen=True)
class Shard:
    dataset: str
    shard_id: str
    files: tuple[FileInfo, ...]


@dataclass
class IngestPlan:
    shards: list[Shard]
    unchanged: int = 0
    other_files: int = 0  # files whose extension is not an image's: counted, not cataloged
    mask_files: int = 0
    dataset: str = ""  # the group the shards write


def dataset_name_for(source_url: str) -> str:
    """Default data set name: the source folder's or archive's base name."""
    url = storage.normalize_url(source_url)
    tail = url.split("::")[-1].rstrip("/")
    stem = posixpath.basename(tail)
    for suffix in storage.ARCHIVE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]", "-", stem).strip("-.") or "images"


def assign_split(sha256: str, fractions: tuple[float, float, float]) -> str:
    """train/valid/test from the content hash: stable across runs, and duplicates land together."""
    u = int(sha256[:12], 16) / 16**12
    if u < fractions[0]:
        return "train"
    return "valid" if u < fractions[0] + fractions[1] else "test"


def is_pattern(masks: str | None) -> bool:
    return bool(masks) and "{stem}" in masks


def mask_regex(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(re.escape("{stem}"), "(.+)") + "$")


def mask_uri_for(info: FileInfo, masks: str | None) -> str | None:
    if not masks:
        return None
    if is_pattern(masks):
        stem = posixpath.splitext(posixpath.basename(info.rel))[0]
        return storage.sibling(info.uri, masks.format(stem=stem))
    return storage.join(masks, info.rel)


def plan_ingest(dataset: str, files: Iterable[FileInfo], existing: Mapping[str, tuple[int, str]] | pa.Table,
                cfg: IngestConfig) -> IngestPlan:
    """Keep image files that are new or changed since the last ingest, in shards of cfg.shard_size.

    `existing` is the catalog's view (`existing_versions`: uri, bytes, source_version columns), or a mapping
    uri -> (bytes, source_version). A file is unchanged when its URI's row has its size and version. The
    listing is matched against it in Arrow: only the files to ingest become Python objects again. A shard's id
    hashes its inputs and the config, so a rerun of the same shard rewrites the same catalog part.
    """
    check_name(dataset, "dataset name")
    plan = IngestPlan(shards=[], dataset=dataset)
    masks_root = storage.normalize_url(cfg.masks) if cfg.masks and not is_pattern(cfg.masks) else None
    mask_name = mask_regex(cfg.masks) if is_pattern(cfg.masks) else None

    listed, originals = listing_table(files, LISTED_FILE)
    mask = np.zeros(listed.num_rows, bool)
    if masks_root:
        mask = exact_in_python(pc.starts_with(listed["uri"], masks_root + "/").to_numpy(zero_copy_only=False),
                               listed, "uri", originals, lambda uri: uri.startswith(masks_root + "/"))
    if mask_name:
        mask |= np.array([bool(mask_name.match(posixpath.basename(originals[i].rel if i in originals else rel)))
                          for i, rel in enumerate(listed["rel"].to_pylist())], bool)
    image = ~mask & extension_in(listed, "rel", cfg.extensions, originals)
    plan.mask_files, plan.other_files = int(mask.sum()), int((~mask & ~image).sum())
    unchanged = image & (False if cfg.force else unchanged_files(listed, existing))
    plan.unchanged = int(unchanged.sum())
    todo = listed_objects(listed, np.nonzero(image & ~unchanged)[0], FileInfo, originals)
    settings = cfg.model_dump_json(exclude={"shard_size", "workers", "io_threads", "force"})
    for chunk in chunks(todo, cfg.shard_size or auto_shard_size(len(todo), cfg.workers)):
        plan.shards.append(Shard(dataset, shard_id(dataset, settings, [(f.uri, f.size, f.version) for f in chunk]),
                                 chunk))
    return plan


# A listed file's fields, in FileInfo's order (`listed_objects` makes FileInfo from them).
LISTED_FILE = {"uri": pa.string(), "size": pa.int64(), "version": pa.string(), "rel": pa.string()}


def unchanged_files(listed: pa.Table, existing: Mapping[str, tuple[int, str]] | pa.Table) -> np.ndarray:
    """For each listed file (`listing_table` of LISTED_FILE): whether the catalog has its URI with its size and
    version, as `existing.get(uri) == (size, version)` says (a null equal to a null)."""
    if not isinstance(existing, pa.Table):
        existing = pa.table({"uri": pa.array(list(existing), pa.string()),
                             "bytes": pa.array([v[0] for v in existing.values()], pa.int64()),
                             "source_version": pa.array([v[1] for v in existing.values()], pa.string())})
    match = Matches.of(listed, "uri", existing, "uri")
    unchanged = np.zeros(listed.num_rows, bool)
    unchanged[match.found] = (same(match.listed("size"), match.cataloged("bytes"))
                              & same(match.listed("version"), match.cataloged("source_version")))
    return unchanged


def _check_mask(mask_uri: str, width: int, height: int, max_pixels: int) -> str | None:
    """None when the mask is usable, else the error text for the image's row."""
    try:
        data = storage.read_bytes(mask_uri)
    except StorageError:
        return f"mask_missing: no mask at {mask_uri}"
    try:
        _, facts = open_image(data, max_pixels)
    except ImageError as exc:
        return f"mask_unreadable: {mask_uri}: {exc}"
    if (facts.width, facts.height) != (width, height):
        return f"mask_size: mask {facts.width}x{facts.height} differs from image {width}x{height}"
    return None


def ingest_file(info: FileInfo, dataset: str, cfg: IngestConfig, now: datetime) -> dict:
    """One catalog row for one file. Never raises for a bad image: the row says what is wrong."""
    row = {"dataset": dataset, "uri": storable(info.uri), "bytes": info.size, "source_version": info.version,
           "ingested_at": now, "status": "error"}
    reason = unsafe_reason(info.rel)
    if reason:  # a row, so that a data set has one per source file; never read, nothing derived from it
        return row | {"mask_uri": None, "error": f"unsafe_name: {reason}"}
    row["mask_uri"] = mask_uri_for(info, cfg.masks)
    try:
        data = storage.read_bytes(info.uri)
    except Exception as exc:  # a bad archive member (BadZipFile: CRC) is this file's problem, not the shard's
        return row | {"error": error_row(exc, "unreadable")}
    sha = hashlib.sha256(data).hexdigest()
    row |= {"sha256": sha, "bytes": len(data), "split": assign_split(sha, cfg.split_fractions)}
    try:
        im, facts = open_image(data, cfg.max_pixels)
        im.close()
    except ImageError as exc:
        return row | {"error": str(exc)}
    row |= {"width": facts.width, "height": facts.height, "format": facts.format, "mode": facts.mode}
    if row["mask_uri"]:
        problem = _check_mask(row["mask_uri"], facts.width, facts.height, cfg.max_pixels)
        if problem:
            return row | {"error": problem}
    return row | {"status": "ok", "error": None}


def ingest_shard(shard: Shard, workspace: str, cfg: IngestConfig) -> ShardResult:
    """Read, hash and validate a shard's files on cfg.io_threads threads, then write its catalog part.

    PIL and hashlib release the GIL while decoding and hashing, so threads use all cores and overlap I/O.
    """
    now = datetime.now(UTC)
    with ThreadPoolExecutor(min(cfg.io_threads, len(shard.files)) or 1) as pool:
        rows = list(pool.map(lambda f: ingest_file(f, shard.dataset, cfg, now), shard.files))
    return commit_shard(Catalog(workspace), "images", shard.dataset, shard.shard_id, rows)


def existing_versions(catalog: Catalog, dataset: str) -> pa.Table:
    """The data set's files as the catalog has them: uri, bytes and source_version columns, one row per uri
    (what `plan_ingest` matches a listing against)."""
    return catalog.read("images", dataset, columns=["uri", "bytes", "source_version"])


def _first_uri_by_content(uri: pa.ChunkedArray, sha: pa.ChunkedArray, kept: np.ndarray) -> pa.Array:
    """For each row: the URI that sorts first among the kept rows with its sha256 when that is another file's,
    else null (no sha256, an empty one, or the row is its content's first file). Only content shared by two kept
    rows can give a value, so only those rows are grouped."""
    n = len(uri)
    has_sha = pc.fill_null(pc.not_equal(sha, ""), False).to_numpy(zero_copy_only=False) & kept
    rows = np.nonzero(has_sha)[0]
    result = pa.nulls(n, pa.string())
    if len(rows) == 0:
        return result
    shas = sha if len(rows) == n else sha.take(pa.array(rows, pa.int64()))
    counts = pc.value_counts(shas)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    rows = rows[pc.is_in(shas, value_set=repeated).to_numpy(zero_copy_only=False)]  # a hash set of the few
    if len(rows) == 0:
        return result
    ids = group_ids(pa.table({"sha256": sha.take(pa.array(rows, pa.int64()))}), ["sha256"])
    uris = uri.take(pa.array(rows, pa.int64())).combine_chunks()
    by_uri = np.empty(len(uris), np.int64)
    by_uri[pc.sort_indices(uris).to_numpy()] = np.arange(len(uris))  # each row's place in URI order
    order = np.lexsort((by_uri, ids))  # by content, then by URI
    starts = np.ones(len(order), bool)
    starts[1:] = ids[order][1:] != ids[order][:-1]
    first_of = np.empty(ids.max() + 1, np.int64)
    first_of[ids[order][starts]] = order[starts]  # the row whose URI sorts first, for each content
    firsts = uris.take(pa.array(first_of[ids], pa.int64()))
    value = pc.if_else(pc.equal(firsts, uris), pa.scalar(None, pa.string()), firsts)
    mask = np.zeros(n, bool)
    mask[rows] = True
    return pc.replace_with_mask(result, pa.array(mask), value)


FINALIZE_COLUMNS = ["uri", "sha256", "ingested_at", "duplicate_of"]


def finalize_dataset(catalog: Catalog, dataset: str) -> int:
    """Make the data set's parts consistent; returns how many parts were rewritten (or merged away).

    - one row per uri: a file re-ingested after it changed keeps only its newest row (ties: the part whose name
      sorts last);
    - duplicate content is flagged: `duplicate_of` names the file with the same sha256 whose URI sorts first.
      Not the first ingested: shards finish in a different order on every run, and a run killed and rerun
      ingests in another order again, yet the catalog (and the pairs named after the original) must not change.
    Parts are only rewritten when something in them changes, each atomically; this is the images table's
    compaction, so it also merges small parts (tasks/core/catalog.py, protocol point 4). Reads four columns; a
    data set whose parts are as the last finalize that had nothing to do left them costs one listing, and one
    that only gained parts since costs reading those (`_finalize_new_parts`).
    """
    params = {"target_rows": catalog_module.TARGET_ROWS, "max_small_parts": catalog_module.MAX_SMALL_PARTS}
    stamps = catalog.part_stamps("images", dataset)
    if catalog.settled("images", dataset, "finalize", params, stamps):
        return 0
    rewritten = _finalize_new_parts(catalog, dataset, params, stamps)
    if rewritten is not None:
        return rewritten
    scan = catalog.scan("images", dataset, FINALIZE_COLUMNS, stamps)
    if not scan.uris:
        return 0
    keep, duplicate_of = _consistent(scan)
    result = catalog.rewrite(scan, keep, patch={"duplicate_of": duplicate_of})
    if not result.parts and not result.written:
        catalog.settle(scan, "finalize", params)
    return result.parts


def _consistent(scan: catalog_module.PartsScan) -> tuple[np.ndarray, pa.Array]:
    """The rows that stay (the newest of each uri) and every row's duplicate_of, as `finalize_dataset` says."""
    data = scan.data
    by_name = np.empty(len(scan.uris), np.int64)
    by_name[np.argsort(np.array(scan.uris, dtype=object), kind="stable")] = np.arange(len(scan.uris))
    when = rank_values(data, "ingested_at")
    part = by_name[scan.part]
    ids = None if all_distinct(data["uri"]) else group_ids(data, ["uri"])
    if ids is not None and ids.max() + 1 < data.num_rows:
        # the newest (ingested_at, part name) of each uri; every row that has it stays
        best = best_of_groups(ids, [when, part])
        best_when, best_part = np.empty(ids.max() + 1, np.int64), np.empty(ids.max() + 1, np.int64)
        best_when[ids[best]], best_part[ids[best]] = when[best], part[best]
        keep = (when == best_when[ids]) & (part == best_part[ids])
    else:
        keep = np.ones(data.num_rows, bool)
    return keep, _first_uri_by_content(data["uri"], data["sha256"], keep)


def _finalize_new_parts(catalog: Catalog, dataset: str, params: dict, stamps: dict[str, tuple]) -> int | None:
    """finalize_dataset of a data set that only gained parts since a finalize that had nothing to do, when no
    old row shares a URI or a sha256 with a new one: the old rows then stay as they are (each the only row of
    its URI, its duplicate_of right among them) and the new ones are made consistent among themselves. Costs
    reading the new parts and the old parts' uri and sha256 columns (not their rows into Python, nor a dedup
    of them). None when it does not apply (then the whole data set is read); else what finalize_dataset returns.
    """
    record = catalog.settled_record("images", dataset, "finalize", params)
    if record is None or not isinstance(record.get("rows"), dict) or not stamps:
        return None
    now = catalog.stamp_names(stamps)
    if any(now.get(name) != stamp for name, stamp in record["parts"].items()):
        return None  # an old part changed or went: anything may have
    new = [uri for uri in sorted(stamps) if posixpath.basename(uri) not in record["parts"]]
    old = [uri for uri in sorted(stamps) if posixpath.basename(uri) in record["parts"]]
    small = sum(0 < n < params["target_rows"] for n in record["rows"].values())
    if not new or not old or small + len(new) > params["max_small_parts"]:
        return None  # parts to merge: the whole data set's compaction
    scan = catalog.scan_parts("images", dataset, new, FINALIZE_COLUMNS, stamps)
    if scan is None:
        return None
    touched = catalog.scan_parts("images", dataset, old, ["uri"], stamps,
                                 filter=pc.field("uri").isin(pc.unique(pc.drop_null(scan.data["uri"])))
                                 | pc.field("sha256").isin(pc.unique(pc.drop_null(scan.data["sha256"]))))
    if touched is None or touched.data.num_rows:
        return None  # a new row meets an old one: the whole data set decides
    keep, duplicate_of = _consistent(scan)
    result = catalog.rewrite(scan, keep, patch={"duplicate_of": duplicate_of})
    if not result.parts and not result.written and set(scan.uris) == set(scan.stamps):
        rows = {uri: record["rows"][posixpath.basename(uri)] for uri in old}
        rows |= dict(zip(scan.uris, scan.rows_per_part.tolist(), strict=True))
        catalog.settle_parts("images", dataset, "finalize", params, {u: stamps[u] for u in old + new}, rows)
    return result.parts
