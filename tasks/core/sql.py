"""SQL over the catalog: DuckDB views that see each key once, the very row `Catalog.read` keeps.

    con = sql.connect(workspace)                 # one view per table: images, pairs, models, evaluations, predictions
    con.sql("select status, count(*) from images group by 1").to_arrow_table()
    sql.query(workspace, "select ...")           # the same, as an Arrow table, a vanished part read again

A view reads the table's parts as the catalog lists them (groups, then parts, in name order) and keeps, per key,
the row the catalog's protocol keeps (tasks/core/catalog.py, point 1): the highest ranks of the table's ranking
(`ok` is status = 'ok', a timestamp its microseconds, null lowest), then the row read last (the part listed last,
its last row). Columns renamed since old parts were written (tables.py `legacy`) are folded in, a column no part
has yet reads as null, so old and new catalogs answer alike.

Local parts are read by DuckDB itself; any other store (s3://, memory://) through the workspace's fsspec
filesystem, registered in DuckDB: no DuckDB extension is loaded (none is downloaded: `httpfs` is not needed).
A view is a snapshot of the listing made when it was registered: a compaction that deletes a part it names makes
the next query fail with a missing file, and `query` lists again and retries, as `Catalog.read` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import duckdb
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from pixelmill.tasks.core import storage, tables
from pixelmill.tasks.core.catalog import LIST_ATTEMPTS, Catalog
from pixelmill.tasks.core.errors import ConfigError


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def rank_sql(name: str) -> str:
    """One ranking column as a BIGINT, bigger is better, as catalog.rank_values computes it."""
    if name == "ok":
        return "CASE WHEN \"status\" = 'ok' THEN 1 ELSE 0 END"
    return f"coalesce(epoch_us({quote(name)}), 0)"


def dedup_sql(table: str, source: str, columns: Iterable[str] | None = None) -> str:
    """A SELECT of the best row per key of `table` from `source`: a FROM item whose rows carry the table's
    columns plus `file_index` (the part's place in reading order) and `file_row_number`, as DuckDB's
    read_parquet gives them. `columns`: what `source` holds (default: all of the table's, legacy ones folded
    in); a table column it lacks reads as null."""
    decl = tables.table(table)
    present = set(decl.read_schema().names if columns is None else columns)
    types = duckdb_types(decl.schema)

    def column(name: str) -> str:
        olds = [old for old, new in decl.legacy.items() if new == name and old in present]
        found = [quote(c) for c in ([name] if name in present else []) + olds]
        value = found[0] if len(found) == 1 else f"coalesce({', '.join(found)})" if found else "NULL"
        return f"CAST({value} AS {types[name]}) AS {quote(name)}"

    select = ", ".join(column(name) for name in decl.schema.names)
    order = ", ".join([*(f"{rank_sql(r)} DESC" for r in decl.ranking), "__file DESC", "__row DESC"])
    return (f"SELECT * EXCLUDE (__file, __row) FROM (SELECT {select}, file_index AS __file, "
            f"file_row_number AS __row FROM {source}) "
            f"QUALIFY row_number() OVER (PARTITION BY {', '.join(map(quote, decl.key))} ORDER BY {order}) = 1")


def duckdb_types(schema: pa.Schema) -> dict[str, str]:
    """Each column's DuckDB type, as DuckDB reads the Arrow type."""
    relation = duckdb.connect().from_arrow(schema.empty_table())
    return {name: str(kind) for name, kind in zip(relation.columns, relation.types, strict=True)}


def _paths(con: duckdb.DuckDBPyConnection, uris: list[str]) -> list[str]:
    """What DuckDB opens for these parts: a local path, or the URI on the store's fsspec filesystem (registered
    in `con` once per protocol)."""
    fs, _ = storage.resolve(uris[0])
    if isinstance(fs, LocalFileSystem):
        return [storage.resolve(u)[1] for u in uris]
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    if not con.filesystem_is_registered(protocols[0]):
        con.register_filesystem(fs)
    return uris


def register_table(con: duckdb.DuckDBPyConnection, catalog: Catalog, table: str, group: str | None = None) -> list[str]:
    """Create (or replace) the view `table` over the parts listed now (of one group, or all); returns them."""
    decl = tables.table(table)
    uris = catalog.part_uris(table, group)
    if uris:
        files = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in _paths(con, uris)) + "]"
        source = f"read_parquet({files}, union_by_name = true, file_row_number = true)"
        columns = con.sql(f"SELECT * FROM {source} LIMIT 0").columns
        body = dedup_sql(table, source, columns)
    else:  # nothing written yet: an empty view with the table's columns
        types = duckdb_types(decl.schema)
        body = "SELECT " + ", ".join(f"CAST(NULL AS {types[n]}) AS {quote(n)}" for n in decl.schema.names) + \
            " WHERE false"
    con.execute(f"CREATE OR REPLACE VIEW {quote(table)} AS {body}")
    return uris


def connect(workspace: str, names: Iterable[str] | None = None,
            con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (a new in-memory one, or `con`) with one view per table (`names`, default all)."""
    con = con or duckdb.connect()
    register(con, Catalog(workspace), list(names) if names is not None else list(tables.TABLES))
    return con


def register(con: duckdb.DuckDBPyConnection, catalog: Catalog, names: list[str]) -> list[list[str]]:
    """The views `names` in `con`; returns the parts each one reads."""
    # no extension is fetched from the network (none is needed), and timestamps come back in UTC as the catalog's
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET TimeZone = 'UTC'")
    return [register_table(con, catalog, name) for name in names]


def mentioned(text: str) -> list[str]:
    """The tables a query names (as whole words); all of them when it names none."""
    named = [t for t in tables.TABLES if re.search(rf"\b{t}\b", text, re.IGNORECASE)]
    return named or list(tables.TABLES)


def query(workspace: str, text: str) -> pa.Table:
    """Run one SQL statement over the workspace's views (only the tables it names are listed) as an Arrow table.
    A part deleted under it by a compaction: listed and run again. A bad query: a ConfigError with DuckDB's
    first line."""
    names = mentioned(text)
    catalog = Catalog(workspace)
    for attempt in range(1, LIST_ATTEMPTS + 1):
        con = duckdb.connect()
        listed = None  # a part gone while the views were made: listed again
        try:
            listed = register(con, catalog, names)
            result = con.sql(text)
            return result.to_arrow_table() if result is not None else pa.table({})
        except duckdb.IOException as exc:
            # a part gone since the listing (another run's compaction) makes the listing differ: read it again
            if attempt == LIST_ATTEMPTS or listed is not None and listed == [catalog.part_uris(name) for name in names]:
                raise bad_query(exc) from None
        except duckdb.Error as exc:
            raise bad_query(exc) from None
        finally:
            con.close()
    raise AssertionError("unreachable")


def bad_query(exc: BaseException) -> ConfigError:
    return ConfigError(f"SQL: {first_line(exc)}", f"the views are {', '.join(tables.TABLES)}; their columns: "
                                                  "pixelmill catalog sql \"describe images\"")


def first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
