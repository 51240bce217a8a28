"""The catalog: one Parquet dataset per table under `{workspace}/catalog/{table}/{group}/`.

A table is split into groups (a data set's name, a model's name) and each group into parts, one part per
shard of work, named after the shard's inputs. Writing the same shard again replaces its part atomically,
so a rerun never duplicates rows. Any Parquet reader sees a table as `catalog/{table}/*/*.parquet`.

Overlapping writers (two runs with different options at once, a crash between a retry and a rerun, an old
version's leftovers) can still put the same *key* in two parts: a pair made by `--split all` and by
`--split train` lands in two shards. The protocol, without locks that a kill -9 could leave behind:

1. Every table names its key and a ranking (tasks/core/tables.py): for pairs, an ok row beats an error row, then the
   newest wins; elsewhere the newest wins, then the part read last.
2. Readers deduplicate: `Catalog.read` returns one row per key, the best one, whatever is on storage.
3. Writers compact: the flow that wrote a group calls `compact` at its end, which rewrites (atomically) only
   parts that hold a beaten row. A row is removed only when a better row for its key exists in a part the
   compaction read, so the best row of a key is never removed, and concurrent compactions agree; a race can
   at worst leave a duplicate for the next compaction, which readers already hide. Every run compacts, so a
   rerun also repairs duplicates left by older versions.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pixelmill.tasks.core import storage, tables
from pixelmill.tasks.core.errors import StorageError
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.names import check_name

# The tables themselves (schemas, keys, rankings, legacy column names) are declared in tasks/core/tables.py.
IMAGES, PAIRS, MODELS, EVALUATIONS, PREDICTIONS = (tables.TABLES[t].schema for t in
                                                   ("images", "pairs", "models", "evaluations", "predictions"))

# Listings a read makes when parts vanish under it (each vanishing is a concurrent compaction's doing).
LIST_ATTEMPTS = 5


def schema_of(table: str) -> pa.Schema:
    return tables.table(table).schema


def _rank_column(table: pa.Table, name: str) -> list:
    if name == "ok":
        return pc.fill_null(pc.equal(table["status"], "ok"), False).to_pylist()
    return pc.fill_null(table[name].cast(pa.int64()), 0).to_pylist()  # timestamps as integers; none first


def best_rows(table: pa.Table, name: str) -> list[int] | None:
    """Indices of the best row per key, in table order; None when every key is already unique."""
    key_cols, rank_cols = tables.table(name).key, tables.table(name).ranking
    keys = list(zip(*(table[c].to_pylist() for c in key_cols), strict=True))
    if len(set(keys)) == len(keys):
        return None
    ranks = list(zip(*(_rank_column(table, c) for c in rank_cols), strict=True))
    best: dict[tuple, tuple[tuple, int]] = {}
    for i, (key, rank) in enumerate(zip(keys, ranks, strict=True)):
        if key not in best or (rank, i) > best[key]:
            best[key] = (rank, i)
    return sorted(i for _, i in best.values())


def to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class Catalog:
    def __init__(self, workspace: str):
        self.workspace = storage.normalize_url(workspace)

    def table_url(self, table: str) -> str:
        schema_of(table)
        return Layout(self.workspace).table(table)

    def groups(self, table: str) -> list[str]:
        fs, path = storage.resolve(self.table_url(table))
        try:
            entries = fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory")

    def part_uris(self, table: str, group: str | None = None) -> list[str]:
        groups = [group] if group is not None else self.groups(table)
        return [storage.join(self.table_url(table), g, name)
                for g in groups for name in storage.list_names(storage.join(self.table_url(table), g), ".parquet")]

    def write_part(self, table: str, group: str, part: str, rows: Iterable[dict] | pa.Table) -> str:
        """Write (or atomically replace) one part; returns its URI."""
        schema = schema_of(table)
        data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=schema)
        name = f"part-{check_name(part, 'part')}.parquet"
        uri = storage.join(self.table_url(table), check_name(group, "group"), name)
        storage.write_bytes(uri, to_parquet_bytes(data.cast(schema)))
        return uri

    def read(self, table: str, group: str | None = None, columns: list[str] | None = None,
             filter: ds.Expression | None = None) -> pa.Table:
        """The whole table (or one group) as one Arrow table, one row per key (see the protocol above);
        an empty table when nothing is written yet."""
        decl = tables.table(table)
        needed = [*decl.key, *(("status", "created_at") if "ok" in decl.ranking else decl.ranking)]
        wanted = columns and list(dict.fromkeys([*columns, *needed]))
        late_filter = None
        if decl.legacy:
            # Old parts hold renamed columns: read those too and fold them in before filtering by the new names
            # (the tables with renames are small, so the filter runs here instead of in the scan).
            late_filter, filter = filter, None
            wanted = None if late_filter is not None else wanted and [
                *wanted, *(old for old, new in decl.legacy.items() if new in wanted)]
        for attempt in range(1, LIST_ATTEMPTS + 1):
            uris = self.part_uris(table, group)
            if not uris:
                empty = decl.schema.empty_table()
                return empty.select(columns) if columns else empty
            fs, _ = storage.resolve(uris[0])
            try:
                # Passing the schema lets parts written before a column was added read it as null.
                dataset = ds.dataset([storage.resolve(u)[1] for u in uris], schema=decl.read_schema(),
                                     format="parquet", filesystem=fs)
                data = dataset.to_table(columns=wanted, filter=filter)
                break
            except FileNotFoundError:
                # Another run's compaction removed a part since it was listed: every row in it lost to a row
                # in a part that stays, so listing again gives the same answer.
                if attempt == LIST_ATTEMPTS:
                    raise
        data = decl.upgrade(data)
        if late_filter is not None:
            data = data.filter(late_filter)
        keep = best_rows(data, table)
        if keep is not None:
            data = data.take(pa.array(keep, pa.int64()))
        return data.select(columns) if columns else data

    def read_parts(self, table: str, group: str) -> Iterator[tuple[str, pa.Table]]:
        """Each part and its rows; a part that another run's compaction removed since the listing is skipped
        (its rows lost to rows in parts that stay)."""
        decl = tables.table(table)
        for uri in self.part_uris(table, group):
            try:
                data = storage.read_bytes(uri)
            except StorageError:
                if storage.exists(uri):
                    raise
                continue
            # an old part comes back in today's columns, so a compaction that rewrites it also upgrades it
            yield uri, decl.upgrade(pq.read_table(io.BytesIO(data), schema=decl.read_schema()))

    def compact(self, table: str, group: str) -> int:
        """Remove rows beaten by a better row of the same key in the group; returns how many went."""
        parts = list(self.read_parts(table, group))
        if len(parts) < 2:
            return 0
        combined = pa.concat_tables([t for _, t in parts])
        keep = best_rows(combined, table)
        if keep is None:
            return 0
        kept, start = set(keep), 0
        for uri, part in parts:
            mine = [i - start for i in range(start, start + part.num_rows) if i in kept]
            if len(mine) < part.num_rows:
                self.replace_part(uri, part.take(pa.array(mine, pa.int64())), table)
            start += part.num_rows
        return combined.num_rows - len(keep)

    def replace_part(self, uri: str, rows: pa.Table | list[dict], table: str) -> None:
        """Rewrite an existing part in place (atomically), or delete it when no rows are left."""
        schema = schema_of(table)
        data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
        if data.num_rows == 0:
            storage.remove(uri)
        else:
            storage.write_bytes(uri, to_parquet_bytes(data.cast(schema)))
