"""The catalog: one Parquet dataset per table under `{workspace}/catalog/{table}/{group}/`.

A table is split into groups (a data set's name, a model's name) and each group into parts, one part per
shard of work, named after the shard's inputs. Writing the same shard again replaces its part atomically,
so a rerun never duplicates rows. Any Parquet reader sees a table as `catalog/{table}/*/*.parquet`.

Overlapping writers (two runs with different options at once, a crash between a retry and a rerun, an old
version's leftovers) can still put the same *key* in two parts: a pair made by `--split all` and by
`--split train` lands in two shards. The protocol, without locks that a kill -9 could leave behind:

1. Every table names its key and a ranking (KEYS below): for pairs, an ok row beats an error row, then the
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

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.errors import ConfigError, StorageError
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.names import check_name

UTC_TIME = pa.timestamp("us", tz="UTC")

IMAGES = pa.schema([
    ("dataset", pa.string()),
    ("uri", pa.string()),
    ("sha256", pa.string()),
    ("bytes", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("format", pa.string()),
    ("mode", pa.string()),
    ("status", pa.string()),  # ok | error
    ("error", pa.string()),  # "<kind>: <message>", null when ok
    ("split", pa.string()),  # train | valid | test
    ("mask_uri", pa.string()),
    ("duplicate_of", pa.string()),  # uri of the first file with the same content
    ("source_version", pa.string()),  # ETag/mtime/CRC seen at ingest: how reruns spot unchanged files
    ("ingested_at", UTC_TIME),
])

PAIRS = pa.schema([
    ("pair_id", pa.string()),  # from image content, recipe hash and seed: the same pair on every rerun
    ("set_name", pa.string()),
    ("dataset", pa.string()),
    ("image_uri", pa.string()),
    ("image_sha256", pa.string()),
    ("split", pa.string()),
    ("recipe", pa.string()),
    ("recipe_hash", pa.string()),
    ("seed", pa.int64()),
    ("params", pa.string()),  # JSON: every random draw, so a pair can be explained and remade
    ("hr_uri", pa.string()),
    ("lr_uri", pa.string()),
    ("mask_uri", pa.string()),  # segmentation sets: the mask at the LR input's size (nearest neighbour)
    ("hr_width", pa.int32()),
    ("hr_height", pa.int32()),
    ("lr_width", pa.int32()),
    ("lr_height", pa.int32()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("created_at", UTC_TIME),
])

MODELS = pa.schema([
    ("name", pa.string()),
    ("version", pa.string()),  # v1, v2, ...
    ("uri", pa.string()),  # the version's folder: weights.safetensors, config.json, metadata.json
    ("arch", pa.string()),
    ("task", pa.string()),
    ("scale", pa.int32()),
    ("pairs_set", pa.string()),
    ("recipe_hash", pa.string()),
    ("steps", pa.int64()),
    ("metrics", pa.string()),  # JSON: the last validation
    ("code_version", pa.string()),
    ("created_at", UTC_TIME),
])

EVALUATIONS = pa.schema([
    ("evaluation_id", pa.string()),  # one evaluation run: model version + pairs set + split
    ("model", pa.string()),  # name:version
    ("pairs_set", pa.string()),
    ("split", pa.string()),
    ("method", pa.string()),  # model | baseline (bicubic for SR, the input for same-size restoration)
    ("scope", pa.string()),  # image | mean
    ("pair_id", pa.string()),  # the pair (restoration) or image URI (segmentation); null for scope mean/class
    ("psnr_y", pa.float64()),
    ("ssim_y", pa.float64()),
    ("psnr_rgb", pa.float64()),
    ("ssim_rgb", pa.float64()),
    ("images", pa.int64()),
    ("created_at", UTC_TIME),
    # segmentation: scope image/mean rows carry the three summary scores, scope class rows one class's
    ("miou", pa.float64()),
    ("global_acc", pa.float64()),
    ("mean_class_acc", pa.float64()),
    ("class_name", pa.string()),
    ("iou", pa.float64()),
    ("accuracy", pa.float64()),
])

PREDICTIONS = pa.schema([
    ("input_uri", pa.string()),
    ("input_sha256", pa.string()),  # null when the input could not be read
    ("input_version", pa.string()),  # ETag/mtime/CRC at listing (or the images table's source_version)
    ("input_bytes", pa.int64()),
    ("output_root", pa.string()),  # the --output URL: the same input applied to two places is two rows
    ("output_uri", pa.string()),
    ("overlay_uri", pa.string()),  # segmentation with --overlay
    ("model", pa.string()),
    ("model_version", pa.string()),
    ("task", pa.string()),  # restoration | colorize | segmentation
    ("input_width", pa.int32()),
    ("input_height", pa.int32()),
    ("output_width", pa.int32()),
    ("output_height", pa.int32()),
    ("tiles", pa.int32()),
    ("seconds", pa.float64()),  # decode to written, this image alone
    ("status", pa.string()),  # ok | error
    ("error", pa.string()),  # "<kind>: <message>" (kinds of the images table, unsafe_name, write_failed)
    ("run_id", pa.string()),  # the Prefect flow run
    ("created_at", UTC_TIME),
])

SCHEMAS: dict[str, pa.Schema] = {"images": IMAGES, "pairs": PAIRS, "models": MODELS, "evaluations": EVALUATIONS,
                                 "predictions": PREDICTIONS}

# What one row stands for, and how duplicates of it rank (best last): "ok" means status == "ok".
KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "images": (("dataset", "uri"), ("ingested_at",)),
    "pairs": (("set_name", "pair_id"), ("ok", "created_at")),
    "models": (("name", "version"), ("created_at",)),
    "evaluations": (("evaluation_id", "method", "scope", "pair_id", "class_name"), ("created_at",)),
    # the newest attempt wins: a changed input's new row, a retried write_failed, a --force rerun
    "predictions": (("model", "model_version", "output_root", "input_uri"), ("created_at",)),
}

# Listings a read makes when parts vanish under it (each vanishing is a concurrent compaction's doing).
LIST_ATTEMPTS = 5

def schema_of(table: str) -> pa.Schema:
    if table not in SCHEMAS:
        raise ConfigError(f"unknown table {table!r}", f"valid tables: {', '.join(sorted(SCHEMAS))}")
    return SCHEMAS[table]


def _rank_column(table: pa.Table, name: str) -> list:
    if name == "ok":
        return pc.fill_null(pc.equal(table["status"], "ok"), False).to_pylist()
    return pc.fill_null(table[name].cast(pa.int64()), 0).to_pylist()  # timestamps as integers; none first


def best_rows(table: pa.Table, name: str) -> list[int] | None:
    """Indices of the best row per key, in table order; None when every key is already unique."""
    key_cols, rank_cols = KEYS[name]
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
        schema = schema_of(table)
        key_cols, rank_cols = KEYS[table]
        needed = [*key_cols, *(("status", "created_at") if "ok" in rank_cols else rank_cols)]
        wanted = columns and list(dict.fromkeys([*columns, *needed]))
        for attempt in range(1, LIST_ATTEMPTS + 1):
            uris = self.part_uris(table, group)
            if not uris:
                empty = schema.empty_table()
                return empty.select(columns) if columns else empty
            fs, _ = storage.resolve(uris[0])
            try:
                # Passing the schema lets parts written before a column was added read it as null.
                dataset = ds.dataset([storage.resolve(u)[1] for u in uris], schema=schema, format="parquet",
                                     filesystem=fs)
                data = dataset.to_table(columns=wanted, filter=filter)
                break
            except FileNotFoundError:
                # Another run's compaction removed a part since it was listed: every row in it lost to a row
                # in a part that stays, so listing again gives the same answer.
                if attempt == LIST_ATTEMPTS:
                    raise
        keep = best_rows(data, table)
        if keep is not None:
            data = data.take(pa.array(keep, pa.int64()))
        return data.select(columns) if columns else data

    def read_parts(self, table: str, group: str) -> Iterator[tuple[str, pa.Table]]:
        """Each part and its rows; a part that another run's compaction removed since the listing is skipped
        (its rows lost to rows in parts that stay)."""
        schema = schema_of(table)
        for uri in self.part_uris(table, group):
            try:
                data = storage.read_bytes(uri)
            except StorageError:
                if storage.exists(uri):
                    raise
                continue
            yield uri, pq.read_table(io.BytesIO(data), schema=schema)

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
