"""The catalog: one Parquet dataset per table under `{workspace}/catalog/{table}/{group}/`.

A table is split into groups (a data set's name, a model's name) and each group into parts, one part per
shard of work, named after the shard's inputs. Writing the same shard again replaces its part atomically,
so a rerun never duplicates rows. Any Parquet reader sees a table as `catalog/{table}/*/*.parquet`.

Overlapping writers (two runs with different options at once, a crash between a retry and a rerun, an old
version's leftovers) can still put the same *key* in two parts: a pair made by `--split all` and by
`--split train` lands in two shards. The protocol, without locks that a kill -9 could leave behind:

1. Every table names its key and a ranking (tasks/core/tables.py): for pairs, an ok row beats an error row, then the
   newest wins; elsewhere the newest wins, then the part read last (parts are read in name order).
2. Readers deduplicate: `Catalog.read` returns one row per key, the best one, whatever is on storage.
3. Writers compact: the flow that wrote a group calls `compact` at its end, which removes beaten rows and merges
   small parts. A row is removed only when a better row for its key exists in a part the compaction read, so
   the best row of a key is never removed, and concurrent compactions agree; a race can at worst leave a
   duplicate for the next compaction, which readers already hide. Every run compacts, so a rerun also repairs
   duplicates left by older versions.
4. Parts per group stay bounded: a part per shard would leave a nightly job thousands of small parts, and every
   read pays per part. When a group holds more than `MAX_SMALL_PARTS` parts under `TARGET_ROWS` rows, a
   compaction merges them, in listing order, into parts of `TARGET_ROWS` or more (`part-merged-*`: they read after
   the shards' hash-named parts). A merged part is written whole first, and only then are the parts it replaces
   deleted: in between, a key's row is in two parts, the same row (or, from `finalize_dataset`, the same row with
   a corrected `duplicate_of`), which readers' deduplication shows once; a crash there leaves exactly that. A
   source part is deleted only when it is still what the compaction read (its size and version), so a shard that
   rewrote its part meanwhile keeps it. A reader that finds a listed part gone lists again and reads only what
   it has not read: a merge writes its part before deleting its sources, so their rows are in the new listing.
5. A compaction (or `finalize_dataset`) that finds nothing to do leaves a hidden `.settled-*.json` naming each part's
   size, version and rows; the next one returns after a listing while the listing still says the same. A
   `finalize_dataset` that finds only new parts beside the settled ones reads those, and of the settled ones only
   enough to see that no new row shares a URI or a sha256 with an old one (else it reads the whole data set).

Everything above runs on Arrow columns (dictionary-encoded keys, numpy sorts): a read, a dedup or a compaction of
a million-row group never makes a Python object per row, and reads only the columns it needs.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pixelmill.tasks.core import storage, tables
from pixelmill.tasks.core.errors import StorageError
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.names import check_name

# The tables themselves (schemas, keys, rankings, legacy column names) are declared in tasks/core/tables.py.
IMAGES, PAIRS, MODELS, EVALUATIONS, PREDICTIONS = (tables.TABLES[t].schema for t in
                                                   ("images", "pairs", "models", "evaluations", "predictions"))

# Listings a read makes in a row when parts vanish under it (each vanishing is a concurrent compaction's doing);
# a listing after which some parts were read starts the count again.
LIST_ATTEMPTS = 5
READ_CHUNK = 512  # parts read at once: what a vanished part costs a reader to read again
# Merging compaction (protocol point 4): rows a merged part holds at least, and the parts under that a group may
# hold before a compaction merges them. 100k rows are 5-30 MB of Parquet; 16 small parts are two weeks of nightly
# runs that each wrote one part, or one run of 16 shards.
TARGET_ROWS = 100_000
MAX_SMALL_PARTS = 16
MERGED_PREFIX = "merged-"
RELEASE_ROWS = 100_000  # a read of this many rows hands its freed buffers back to the system
UNIQUE = b"pixelmill.unique"  # schema metadata of a read: the key column whose values are all different


def schema_of(table: str) -> pa.Schema:
    return tables.table(table).schema


def group_ids(table: pa.Table, columns: Iterable[str]) -> np.ndarray:
    """A dense id per row (0..groups-1) that is equal exactly where the rows' values in `columns` are (nulls equal
    nulls, as Python's == on None): dictionary codes of each column, combined column by column."""
    ids: np.ndarray | None = None
    for name in columns:
        column = table[name]
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        encoded = pc.dictionary_encode(column, null_encoding="encode")
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        if ids is None:
            ids = codes
        elif len(encoded.dictionary) > 1:
            combined = ids * len(encoded.dictionary) + codes  # < rows * rows: no overflow below 3e9 rows
            ids = pc.dictionary_encode(pa.array(combined)).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return np.zeros(table.num_rows, np.int64) if ids is None else ids


def rank_values(table: pa.Table, name: str) -> np.ndarray:
    """One ranking column as integers, bigger is better: "ok" is status == "ok"; timestamps as integers, none first."""
    if name == "ok":
        return pc.fill_null(pc.equal(table["status"], "ok"), False).to_numpy(zero_copy_only=False).astype(np.int64)
    return pc.fill_null(table[name].cast(pa.int64()), 0).to_numpy(zero_copy_only=False)


def best_of_groups(ids: np.ndarray, ranks: list[np.ndarray]) -> np.ndarray:
    """Indices (ascending) of the best row of each id: the highest ranks (lexicographically), then the last row."""
    counts = np.bincount(ids)
    repeated = counts[ids] > 1
    rows = np.nonzero(repeated)[0]
    if len(rows) == 0:
        return np.arange(len(ids))
    sub = ids[rows]
    order = np.lexsort((rows, *(r[rows] for r in reversed(ranks)), sub))  # last key sorts first
    last = np.ones(len(order), bool)
    last[:-1] = sub[order][1:] != sub[order][:-1]
    winners = rows[order][last]
    return np.sort(np.concatenate([np.nonzero(~repeated)[0], winners]))


def all_distinct(column: pa.Array | pa.ChunkedArray) -> bool:
    """Whether no value repeats (null counts as one value): a third of what group ids cost on unique strings."""
    return len(pc.unique(column)) == len(column)


def best_rows(table: pa.Table, name: str) -> pa.Array | None:
    """Indices (int64, in table order) of the best row per key by the table's ranking; None when every key is
    already unique."""
    decl = tables.table(name)
    # the key's last column is its most specific one (a uri, a pair id): unique alone in a compacted group
    if table.num_rows == 0 or all_distinct(table[decl.key[-1]]):
        return None
    ids = group_ids(table, decl.key)
    if ids.max() + 1 == table.num_rows:
        return None
    keep = best_of_groups(ids, [rank_values(table, c) for c in decl.ranking])
    return pa.array(keep, pa.int64())


def differs(a: pa.Array | pa.ChunkedArray, b: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Where two columns differ, a null differing from any value and equal to another null."""
    valid_a = pc.is_valid(a).to_numpy(zero_copy_only=False)
    valid_b = pc.is_valid(b).to_numpy(zero_copy_only=False)
    unequal = pc.fill_null(pc.not_equal(a, b), False).to_numpy(zero_copy_only=False)
    return (valid_a != valid_b) | unequal


# Listed files turned into Arrow at once: the Python objects a planner holds at a time. Small enough that the
# cyclic garbage collector, which scans what survives its young generations, rarely sees one (a million files
# took 50% longer to turn into Arrow in blocks of 65k).
LISTING_BLOCK = 8192
# A listing's columns are hundreds of blocks that stay while the planner's scratch comes and goes: in the system
# allocator (each block its own mapping) they cost what they hold; in Arrow's default one, scattered among the
# scratch, a million files' 110 MB of columns kept another 100 MB from the system.
LISTING_POOL = pa.system_memory_pool()


def listing_table(items: Iterable, fields: dict[str, pa.DataType]) -> tuple[pa.Table, dict[int, object]]:
    """The `fields` attributes of a stream of listed files (FileInfo, ApplyItem), a row per item in order, as one
    Arrow table: a planner matches it against the catalog with joins instead of a Python dict of the catalog,
    and makes Python objects again only for the rows it keeps (`listed_objects`). Only one block of items is
    held at a time. A string that UTF-8 cannot hold (lone surrogates from an undecodable local name) is spelled
    by `storable`, as the catalog spells it, and its item is kept as it is: index -> item."""
    from pixelmill.tasks.core.names import storable

    columns: dict[str, list[pa.Array]] = {name: [] for name in fields}
    originals: dict[int, object] = {}
    block: list = []
    count = 0

    def flush() -> None:
        for name, type_ in fields.items():
            values = [getattr(item, name) for item in block]
            try:
                columns[name].append(pa.array(values, type_, memory_pool=LISTING_POOL))
            except UnicodeEncodeError:
                spelled = [storable(v) if isinstance(v, str) else v for v in values]
                for i, (before, after) in enumerate(zip(values, spelled, strict=True)):
                    if before is not after:
                        originals[count - len(block) + i] = block[i]
                columns[name].append(pa.array(spelled, type_, memory_pool=LISTING_POOL))
        block.clear()

    for item in items:
        block.append(item)
        count += 1
        if len(block) == LISTING_BLOCK:
            flush()
    if block:
        flush()
    return pa.table({name: pa.chunked_array(chunks, fields[name]) for name, chunks in columns.items()}), originals


def listed_objects(listed: pa.Table, rows: np.ndarray, make, originals: dict[int, object]) -> list:
    """`make(*row)` for these rows of a `listing_table` (its fields in order), or the item as it was listed where
    `originals` kept it."""
    picked = listed.take(pa.array(rows, pa.int64()))
    made = map(make, *(picked[name].to_pylist() for name in picked.column_names))
    if not originals:
        return list(made)
    return [originals.get(i, item) for i, item in zip(rows.tolist(), made, strict=True)]


def exact_in_python(result: np.ndarray, listed: pa.Table, column: str, originals: dict[int, object],
                    test) -> np.ndarray:
    """`result` (an Arrow kernel's answer, exact on ASCII strings) with `test(value)` in place of it on the rows of
    a `listing_table` column that are not ASCII or that `originals` kept (tested on the original item's value)."""
    other = np.nonzero(~pc.string_is_ascii(listed[column]).to_numpy(zero_copy_only=False))[0]
    rows = np.union1d(other, np.fromiter(originals, np.int64, len(originals)))
    if len(rows):
        values = listed[column].take(pa.array(rows, pa.int64())).to_pylist()
        result[rows] = [test(getattr(originals[r], column) if r in originals else v)
                        for r, v in zip(rows.tolist(), values, strict=True)]
    return result


def extension_in(listed: pa.Table, column: str, extensions: Iterable[str], originals: dict[int, object]) -> np.ndarray:
    """For each row of a `listing_table`: whether `posixpath.splitext(name)[1].lower()` of its name in `column`
    is one of `extensions`; in Arrow where the name is ASCII."""
    extensions = frozenset(extensions)
    names = listed[column]
    # splitext: the last dot of the last part, when something other than dots comes before it in that part
    found = pc.struct_field(pc.extract_regex(names, r"[^/.][^/]*(?P<ext>\.[^./]*)$"), [0])
    hit = pc.is_in(pc.ascii_lower(found), value_set=pa.array(sorted(extensions), pa.string()))
    return exact_in_python(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), listed, column, originals,
                           lambda name: posixpath.splitext(name)[1].lower() in extensions)


def find_last(keys: pa.Array | pa.ChunkedArray, values: pa.Array | pa.ChunkedArray,
              unique: bool = False) -> np.ndarray:
    """For each key, the index of its last occurrence in `values` (-1 where absent, and for a null key): what
    a Python dict made from `values` would find. One hash table of `values`, probed by every key; `unique`:
    no value repeats (the first occurrence is the last)."""
    n = len(values)
    if n == 0 or len(keys) == 0:
        return np.full(len(keys), -1, np.int64)
    backwards = values if unique else values.take(pa.array(np.arange(n - 1, -1, -1), pa.int64()))
    found = pc.index_in(keys, value_set=backwards, skip_nulls=True)
    at = pc.fill_null(found, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(pc.is_valid(found).to_numpy(zero_copy_only=False), at if unique else n - 1 - at, -1)


def is_unique(table: pa.Table, column: str) -> bool:
    """Whether `Catalog.read` said that this column of its table is unique (nothing since has made it not)."""
    return (table.schema.metadata or {}).get(UNIQUE) == column.encode()


@dataclass
class Matches:
    """The rows of a listing (`listing_table`) whose key a catalog table has, and that table's row for each (its
    last with that key): what a planner compares, a column at a time."""

    listing: pa.Table
    table: pa.Table
    found: np.ndarray  # listed rows found, ascending
    at: np.ndarray  # the table's row for each of them

    @classmethod
    def of(cls, listing: pa.Table, key: str, table: pa.Table, table_key: str) -> Matches:
        at = find_last(listing[key], table[table_key], unique=is_unique(table, table_key))
        found = np.nonzero(at >= 0)[0]
        return cls(listing, table, found, at[found])

    def listed(self, column: str) -> pa.ChunkedArray | pa.Array:
        """The found rows' values of one of the listing's columns."""
        values = self.listing[column]
        return values if len(self.found) == len(values) else values.take(pa.array(self.found, pa.int64()))

    def cataloged(self, column: str) -> pa.ChunkedArray | pa.Array:
        """The table's values of one column for the found rows."""
        return self.table[column].take(pa.array(self.at, pa.int64()))


def same(a: pa.Array | pa.ChunkedArray, b: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Where two columns hold equal values, a null equal to another null (Python's == on None)."""
    return ~differs(a, b)


def to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _stamp(entry: dict) -> tuple:
    """What changes when a part is rewritten: its size and its version (ETag, mtime, inode)."""
    version = next((entry[k] for k in ("ETag", "etag", "mtime", "LastModified", "created") if entry.get(k)), None)
    return entry.get("size"), str(version), entry.get("ino")


@dataclass
class PartsScan:
    """Some columns of every row of a group's parts, as one listing and one read saw them."""

    table: str
    group: str
    uris: list[str]  # the parts read, in reading order
    stamps: dict[str, tuple]  # uri -> _stamp seen before the part was read
    data: pa.Table  # the columns asked for (today's names), rows of uris[0] first
    part: np.ndarray  # each row's part: an index into uris

    @property
    def rows_per_part(self) -> np.ndarray:
        return np.bincount(self.part, minlength=len(self.uris))

    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.rows_per_part)])


@dataclass
class Rewrite:
    """What a compaction did."""

    removed: int = 0  # rows removed (beaten)
    rewritten: int = 0  # parts rewritten in place or deleted
    merged: int = 0  # parts merged into others and deleted
    written: list[str] = field(default_factory=list)  # merged parts written

    @property
    def parts(self) -> int:
        """Parts that changed on storage (rewritten, deleted or merged away)."""
        return self.rewritten + self.merged


class Catalog:
    def __init__(self, workspace: str):
        self.workspace = storage.normalize_url(workspace)

    def table_url(self, table: str) -> str:
        schema_of(table)
        return Layout(self.workspace).table(table)

    def groups(self, table: str) -> list[str]:
        return storage.list_folders(self.table_url(table))

    def part_uris(self, table: str, group: str | None = None) -> list[str]:
        groups = [group] if group is not None else self.groups(table)
        return [storage.join(self.table_url(table), g, name)
                for g in groups for name in storage.list_names(storage.join(self.table_url(table), g), ".parquet")]

    def part_stamps(self, table: str, group: str) -> dict[str, tuple]:
        """uri -> (size, version) of each part, from a fresh listing (not a cached one)."""
        folder = storage.join(self.table_url(table), group)
        fs, path = storage.resolve(folder)
        fs.invalidate_cache(path)
        try:
            entries = storage.retry(lambda: fs.ls(path, detail=True), what=folder)
        except (StorageError, FileNotFoundError):
            return {}
        return {storage.join(folder, posixpath.basename(e["name"].rstrip("/"))): _stamp(e)
                for e in entries if e["type"] != "directory" and e["name"].endswith(".parquet")}

    def write_part(self, table: str, group: str, part: str, rows: Iterable[dict] | pa.Table) -> str:
        """Write (or atomically replace) one part; returns its URI."""
        schema = schema_of(table)
        data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=schema)
        name = f"part-{check_name(part, 'part')}.parquet"
        uri = storage.join(self.table_url(table), check_name(group, "group"), name)
        storage.write_bytes(uri, to_parquet_bytes(data.cast(schema)))
        return uri

    def _columns(self, table: str, columns: list[str] | None, filter) -> tuple[list[str] | None, object, object]:
        """(columns to scan, filter for the scan, filter after the legacy columns are folded in)."""
        decl = tables.table(table)
        if not decl.legacy:
            return columns, filter, None
        # Old parts hold renamed columns: read those too and fold them in before filtering by the new names
        # (the tables with renames are small, so the filter runs here instead of in the scan).
        if filter is not None:
            return None, None, filter
        return columns and [*columns, *(old for old, new in decl.legacy.items() if new in columns)], None, None

    def _read_files(self, uris: list[str], table: str, columns: list[str] | None, filter) -> pa.Table:
        """Rows of these parts in order, with `__fragment_index` (the part's index in uris) last."""
        decl = tables.table(table)
        fs, _ = storage.resolve(uris[0])
        # pyarrow's own local filesystem reads faster than through fsspec; other stores go through fsspec.
        filesystem = pafs.LocalFileSystem() if isinstance(fs, LocalFileSystem) else \
            pafs.PyFileSystem(pafs.FSSpecHandler(fs))
        # Passing the schema lets parts written before a column was added read it as null; from_paths asks the
        # store nothing before reading (no request per part on S3).
        dataset = ds.FileSystemDataset.from_paths([storage.resolve(u)[1] for u in uris], schema=decl.read_schema(),
                                                  format=ds.ParquetFileFormat(), filesystem=filesystem)
        names = decl.read_schema().names if columns is None else columns
        return dataset.to_table(columns=[*names, "__fragment_index"], filter=filter)

    def _load(self, table: str, group: str | None, columns: list[str] | None,
              filter=None) -> tuple[list[str], pa.Table, np.ndarray]:
        """(parts read, their rows in today's columns, each row's part index) for a table or one group.

        A part that vanished since the listing (another run's compaction merged or emptied it) is skipped, and a
        new listing gives the parts not read yet: among them the merged part that holds the vanished one's rows,
        written before it was deleted. Rows read from a part that was merged since are read twice, which the
        readers' deduplication hides."""
        decl = tables.table(table)
        scan_columns, scan_filter, late_filter = self._columns(table, columns, filter)
        read: list[str] = []
        pieces: list[pa.Table] = []
        parts: list[np.ndarray] = []
        gone: set[str] = set()
        listed = self.part_uris(table, group)
        for attempt in range(1, LIST_ATTEMPTS + 1):
            seen = set(read) | gone
            todo = [u for u in listed if u not in seen]
            vanished = False
            for start in range(0, len(todo), READ_CHUNK):
                chunk = todo[start:start + READ_CHUNK]
                try:
                    batches = [(chunk, self._read_files(chunk, table, scan_columns, scan_filter))]
                except FileNotFoundError:  # one of them is gone: read them one by one
                    batches = []
                    for uri in chunk:
                        try:
                            batches.append(([uri], self._read_files([uri], table, scan_columns, scan_filter)))
                        except FileNotFoundError:
                            gone.add(uri)
                            vanished = True
                for uris, data in batches:
                    index = data["__fragment_index"].to_numpy(zero_copy_only=False).astype(np.int64) + len(read)
                    pieces.append(data.drop_columns(["__fragment_index"]))
                    parts.append(index)
                    read += uris
            if not vanished:
                break
            if attempt == LIST_ATTEMPTS:
                raise FileNotFoundError(f"parts of {table} vanished under {LIST_ATTEMPTS} listings in a row: "
                                        f"{sorted(gone)[:3]}")
            for g in [group] if group is not None else self.groups(table):
                fs, path = storage.resolve(storage.join(self.table_url(table), g))
                fs.invalidate_cache(path)  # s3fs keeps listings: this one is out of date
            listed = self.part_uris(table, group)
        if not pieces:
            data = decl.schema.empty_table()
            return read, (data.select(columns) if columns else data), np.zeros(0, np.int64)
        data = decl.upgrade(pa.concat_tables(pieces))
        part = np.concatenate(parts)
        if late_filter is not None:
            data = data.append_column("__row", pa.array(np.arange(data.num_rows), pa.int64())).filter(late_filter)
            part = part[data["__row"].to_numpy()]
            data = data.drop_columns(["__row"])
        return read, data, part

    def read(self, table: str, group: str | None = None, columns: list[str] | None = None,
             filter: ds.Expression | None = None) -> pa.Table:
        """The whole table (or one group) as one Arrow table, one row per key (see the protocol above);
        an empty table when nothing is written yet. Where the key's last column alone is unique (a compacted
        group), the schema's metadata says so (`UNIQUE`: that column's name)."""
        decl = tables.table(table)
        needed = [*decl.key, *(("status", "created_at") if "ok" in decl.ranking else decl.ranking)]
        wanted = columns and list(dict.fromkeys([*columns, *needed]))
        _, data, _ = self._load(table, group, wanted, filter)
        unique = data.num_rows == 0 or all_distinct(data[decl.key[-1]])
        keep = None if unique else best_rows(data, table)
        if keep is not None:
            data = data.take(keep)
        if unique:  # said in the metadata, for a join that would otherwise make sure of it (`find_last`)
            data = data.replace_schema_metadata({**(data.schema.metadata or {}), UNIQUE: decl.key[-1]})
        if data.num_rows >= RELEASE_ROWS:
            # the scan's buffers (pages, decompression, dictionaries, the copy `take` made) stay in Arrow's
            # allocator once freed; handing them back keeps them out of the peak of what a caller does next
            pa.default_memory_pool().release_unused()
        return data.select(columns) if columns else data

    def read_parts(self, table: str, group: str) -> Iterator[tuple[str, pa.Table]]:
        """Each part and its rows; a part that another run's compaction removed since the listing is skipped
        (its rows lost to rows in parts that stay)."""
        for uri in self.part_uris(table, group):
            part = self._read_part(uri, table)
            if part is not None:
                yield uri, part

    def _read_part(self, uri: str, table: str) -> pa.Table | None:
        """One part in today's columns (an old part is upgraded, so a compaction that rewrites it upgrades it);
        None when it is gone."""
        decl = tables.table(table)
        try:
            data = storage.read_bytes(uri)
        except StorageError:
            if storage.exists(uri):
                raise
            return None
        return decl.upgrade(pq.read_table(io.BytesIO(data), schema=decl.read_schema()))

    def scan(self, table: str, group: str, columns: list[str], stamps: dict[str, tuple] | None = None) -> PartsScan:
        """Some columns of every row of a group, with each row's part: what a compaction decides on. `stamps`:
        part_stamps taken just before, when the caller has them."""
        # before reading: a part rewritten after it reads as changed
        stamps = self.part_stamps(table, group) if stamps is None else stamps
        uris, data, part = self._load(table, group, list(dict.fromkeys(columns)))
        return PartsScan(table, group, uris, stamps, data, part)

    def compact(self, table: str, group: str, target_rows: int | None = None,
                max_small_parts: int | None = None) -> int:
        """Remove rows beaten by a better row of the same key in the group, and merge small parts when there are
        more than `max_small_parts` (protocol points 3 and 4); returns how many rows went. A group whose parts
        are as the last compaction that had nothing to do left them costs one listing."""
        decl = tables.table(table)
        params = {"target_rows": target_rows or TARGET_ROWS, "max_small_parts": max_small_parts or MAX_SMALL_PARTS}
        stamps = self.part_stamps(table, group)
        if self.settled(table, group, "compact", params, stamps):
            return 0
        scan = self.scan(table, group, [*decl.key, *(("status",) if "ok" in decl.ranking else ()),
                                        *(c for c in decl.ranking if c != "ok")], stamps)
        if len(scan.uris) < 2:  # one part: nothing to merge, and a part never competes with itself
            self.settle(scan, "compact", params)
            return 0
        keep = np.zeros(scan.data.num_rows, bool)
        best = best_rows(scan.data, table)
        keep[best.to_numpy() if best is not None else slice(None)] = True
        result = self.rewrite(scan, keep, target_rows=target_rows, max_small_parts=max_small_parts)
        if not result.parts and not result.written:
            self.settle(scan, "compact", params)
        return result.removed

    # A group that a compaction (or finalize_dataset) found with nothing to do gets a hidden marker naming its
    # parts as they were (size and version of each); while the listing says the same, the next one has nothing to
    # do either (the same parts give the same answer) and returns after the listing. Any new, rewritten or
    # removed part makes the listing differ, and the group is read again. Parquet readers skip hidden files.
    def _settled_uri(self, table: str, group: str, what: str) -> str:
        return storage.join(self.table_url(table), group, f".settled-{what}.json")

    @staticmethod
    def _settled_record(params: dict, stamps: dict[str, tuple]) -> dict:
        return json.loads(json.dumps({"params": params, "parts": Catalog.stamp_names(stamps)}, default=str))

    @staticmethod
    def stamp_names(stamps: dict[str, tuple]) -> dict[str, list]:
        """part name -> stamp, as a settled record spells them."""
        parts = {posixpath.basename(uri): list(stamp) for uri, stamp in sorted(stamps.items())}
        return json.loads(json.dumps(parts, default=str))

    def settled_record(self, table: str, group: str, what: str, params: dict) -> dict | None:
        """What the last `what` that had nothing to do left: {"params", "parts": name -> stamp, "rows": name ->
        rows}, or None (none, another version's, or other params)."""
        try:
            record = json.loads(storage.read_bytes(self._settled_uri(table, group, what)))
        except (StorageError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("params") == params else None

    def settled(self, table: str, group: str, what: str, params: dict, stamps: dict[str, tuple]) -> bool:
        """Whether the group's parts (`stamps`, a fresh listing) are as `what` left them with nothing to do."""
        if not stamps:
            return False
        record = self.settled_record(table, group, what, params)
        return record is not None and record.get("parts") == self.stamp_names(stamps)

    def settle(self, scan: PartsScan, what: str, params: dict) -> None:
        """Record that `what` found the scanned parts with nothing to do (only when the scan read exactly the
        parts it listed: a part that came or went in between is not vouched for)."""
        if scan.uris and set(scan.uris) == set(scan.stamps):
            self.settle_parts(scan.table, scan.group, what, params, scan.stamps,
                              dict(zip(scan.uris, scan.rows_per_part.tolist(), strict=True)))

    def settle_parts(self, table: str, group: str, what: str, params: dict, stamps: dict[str, tuple],
                     rows: dict[str, int]) -> None:
        """Record that `what` has nothing to do on these parts (uri -> stamp as read, and rows each holds)."""
        record = self._settled_record(params, stamps)
        record["rows"] = {posixpath.basename(uri): int(n) for uri, n in sorted(rows.items())}
        storage.write_bytes(self._settled_uri(table, group, what), json.dumps(record).encode())

    def scan_parts(self, table: str, group: str, uris: list[str], columns: list[str],
                   stamps: dict[str, tuple], filter=None) -> PartsScan | None:
        """`scan` of these parts alone (their rows where `filter`, when given); None when one of them is gone."""
        columns, filter, late_filter = self._columns(table, list(dict.fromkeys(columns)), filter)
        if late_filter is not None:  # renamed columns to filter by: `scan` reads those tables
            return None
        try:
            data = self._read_files(uris, table, columns, filter)
        except FileNotFoundError:
            return None
        part = data["__fragment_index"].to_numpy(zero_copy_only=False).astype(np.int64)
        data = tables.table(table).upgrade(data.drop_columns(["__fragment_index"]))
        return PartsScan(table, group, list(uris), {u: stamps[u] for u in uris if u in stamps}, data, part)

    def rewrite(self, scan: PartsScan, keep: np.ndarray, patch: dict[str, pa.Array] | None = None,
                target_rows: int | None = None, max_small_parts: int | None = None,
                before_delete=None) -> Rewrite:
        """Make the group's parts hold exactly the scanned rows where `keep`, with `patch`'s columns (aligned with
        the scan's rows) in place of theirs; merge small parts when there are too many (protocol point 4).

        Only parts that change are rewritten, each atomically; a part that changed on storage since the scan is
        left as it is (the next compaction sees it again). `before_delete(sources)` is called after a merged part
        is written and before its sources are deleted (tests line a reader up there)."""
        patch = patch or {}
        target_rows = TARGET_ROWS if target_rows is None else target_rows
        max_small_parts = MAX_SMALL_PARTS if max_small_parts is None else max_small_parts
        result = Rewrite()
        total = scan.rows_per_part
        kept = np.bincount(scan.part[keep], minlength=len(scan.uris))
        changed = kept < total
        for name, values in patch.items():
            moved = differs(values, scan.data[name]) & keep
            changed |= np.bincount(scan.part[moved], minlength=len(scan.uris)) > 0
        small = (kept > 0) & (kept < target_rows)
        merging = int(small.sum()) > max_small_parts
        starts = scan.starts()

        # what identifies the rows a part held: the key's columns the scan read (finalize reads uri, not dataset)
        key = [c for c in tables.table(scan.table).key if c in scan.data.column_names] or scan.data.column_names

        def load(parts: list[int]) -> dict[int, pa.Table]:
            """Each part's kept rows, patched; a part that changed on storage since the scan is left out."""
            try:
                _, data, index = self._load_parts([scan.uris[p] for p in parts], scan.table)
                fragments = np.concatenate([[0], np.cumsum(np.bincount(index, minlength=len(parts)))])
                full = {p: data.slice(fragments[i], fragments[i + 1] - fragments[i]) for i, p in enumerate(parts)}
            except FileNotFoundError:  # one of them is gone: read them one by one
                full = {p: self._read_part(scan.uris[p], scan.table) for p in parts}
            out = {}
            for p, data in full.items():
                mine = scan.data.slice(starts[p], total[p])
                if data is None or data.num_rows != total[p] or not data.select(key).equals(mine.select(key)):
                    continue
                local = pa.array(np.nonzero(keep[starts[p]:starts[p + 1]])[0], pa.int64())
                data = data.take(local)
                for name, values in patch.items():
                    data = data.set_column(data.schema.get_field_index(name), name,
                                           values.slice(starts[p], total[p]).take(local))
                out[p] = data.cast(schema)
            return out

        schema = schema_of(scan.table)
        for p in np.nonzero(changed & ~(small & merging))[0]:
            p = int(p)
            if not self._unchanged(scan, [p]):
                continue
            rows = load([p]).get(p)
            if rows is None:
                continue
            self.replace_part(scan.uris[p], rows, scan.table)
            result.rewritten += 1
            result.removed += int(total[p] - kept[p])
        if merging:
            batch: list[int] = []
            for p in [*np.nonzero(small)[0], None]:
                if p is not None:
                    batch.append(int(p))
                    if kept[batch].sum() < target_rows:
                        continue
                todo, batch = batch, []
                if len(todo) == 1 and not changed[todo[0]]:
                    continue  # a part alone, unchanged: nothing to gain by writing it again
                loaded = load(self._unchanged(scan, todo)) if todo else {}
                if not loaded:
                    continue
                sources = sorted(loaded)
                names = sorted(f"{scan.uris[q]}:{scan.stamps.get(scan.uris[q])}" for q in sources)
                digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:20]
                uri = self.write_part(scan.table, scan.group, f"{MERGED_PREFIX}{digest}",
                                      pa.concat_tables([loaded[q] for q in sources]))
                result.written.append(uri)
                if before_delete is not None:
                    before_delete([scan.uris[q] for q in sources])
                still = set(self._unchanged(scan, sources))
                for q in sources:
                    if scan.uris[q] == uri or q not in still:
                        continue  # rewritten by someone since the scan: its rows stay beside the merged copies
                    storage.remove(scan.uris[q])
                    result.merged += 1
                    result.removed += int(total[q] - kept[q])
        return result

    def _load_parts(self, uris: list[str], table: str) -> tuple[list[str], pa.Table, np.ndarray]:
        """Every column of these parts (today's names), rows in order, and each row's index in uris."""
        data = self._read_files(uris, table, None, None)
        index = data["__fragment_index"].to_numpy(zero_copy_only=False).astype(np.int64)
        return uris, tables.table(table).upgrade(data.drop_columns(["__fragment_index"])), index

    def _unchanged(self, scan: PartsScan, parts: list[int]) -> list[int]:
        """Those of `parts` that are on storage as the scan saw them (same size and version)."""
        now = self.part_stamps(scan.table, scan.group)
        return [p for p in parts if scan.uris[p] in now and now[scan.uris[p]] == scan.stamps.get(scan.uris[p])]

    def replace_part(self, uri: str, rows: pa.Table | list[dict], table: str) -> None:
        """Rewrite an existing part in place (atomically), or delete it when no rows are left."""
        schema = schema_of(table)
        data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
        if data.num_rows == 0:
            storage.remove(uri)
        else:
            storage.write_bytes(uri, to_parquet_bytes(data.cast(schema)))
