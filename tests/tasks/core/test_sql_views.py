"""The SQL read path (tasks/core/sql.py, README "Reading the catalog with SQL"): DuckDB's views and the Polars recipe
give exactly the rows `Catalog.read` gives, one per key, on groups with the duplicates that overlapping runs, a
killed compaction and old column names leave; local and on S3."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pixelmill.tasks.core import sql, storage, tables
from pixelmill.tasks.core.catalog import Catalog, to_parquet_bytes
from pixelmill.tasks.core.errors import ConfigError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def random_rows(table: str, rng: np.random.Generator, n: int) -> pa.Table:
    """Rows whose keys repeat (3 values per key column, nulls too), with ties and nulls in the ranking columns."""
    decl = tables.table(table)
    columns = {}
    for f in decl.schema:
        if f.name in decl.key:
            values = rng.choice(["a", "b", None], n).tolist()
        elif f.name == "status":
            values = rng.choice(["ok", "error", None], n).tolist()
        elif pa.types.is_timestamp(f.type):
            values = [None if s < 0 else T0 + timedelta(seconds=int(s)) for s in rng.integers(-1, 3, n)]
        elif pa.types.is_string(f.type):
            values = [f"v{x}" for x in rng.integers(0, 10**6, n)]
        elif pa.types.is_integer(f.type):
            values = rng.integers(0, 1000, n).tolist()
        elif pa.types.is_floating(f.type):
            values = rng.random(n).tolist()
        elif pa.types.is_boolean(f.type):
            values = (rng.random(n) < 0.5).tolist()
        else:
            values = [None] * n
        columns[f.name] = pa.array(values, f.type)
    return pa.table(columns, schema=decl.schema)


def fill(workspace: str, seed: int = 0) -> Catalog:
    """Every table: two groups of five overlapping parts each, and a killed compaction's leftover (a merged part
    written, its sources not yet deleted: every row of it twice)."""
    rng = np.random.default_rng(seed)
    catalog = Catalog(workspace)
    for table in tables.TABLES:
        for group in ("g1", "g2"):
            for part in range(5):
                catalog.write_part(table, group, f"p{part}", random_rows(table, rng, int(rng.integers(1, 12))))
        source = catalog.part_uris(table, "g1")[0]
        catalog.write_part(table, "g1", "merged-leftover", catalog.read_parts(table, "g1").__next__()[1])
        assert source in catalog.part_uris(table, "g1")
    return catalog


def rows_of(data: pa.Table, table: str) -> list[tuple]:
    """Rows as sorted tuples in the table's columns (list columns: DuckDB names their items differently)."""
    names = tables.table(table).schema.names
    values = data.select(names).to_pylist()
    return sorted(tuple(repr(r[n]) for n in names) for r in values)


def check_views(catalog: Catalog) -> None:
    con = sql.connect(catalog.workspace)
    for table in tables.TABLES:
        expected = catalog.read(table)
        got = con.sql(f"select * from {table}").to_arrow_table()
        assert got.num_rows == expected.num_rows, table
        assert rows_of(got, table) == rows_of(expected, table), table
        assert got.column_names == expected.column_names
        # each key once
        key = ", ".join(tables.table(table).key)
        assert con.sql(f"select count(*) from (select distinct {key} from {table})").fetchall()[0][0] == got.num_rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_duckdb_views_keep_the_rows_the_catalog_keeps(tmp_path, seed):
    check_views(fill(str(tmp_path / "ws"), seed))


@pytest.mark.s3
def test_duckdb_views_on_s3_through_fsspec(s3_bucket):
    """No DuckDB extension (httpfs) is loaded: the workspace's s3fs is registered in DuckDB."""
    catalog = fill(f"s3://{s3_bucket}/ws", seed=3)
    check_views(catalog)
    assert sql.query(catalog.workspace, "select count(*) as n from images")["n"].to_pylist() == \
        [catalog.read("images").num_rows]


def test_memory_workspace(memory_url):
    check_views(fill(memory_url, seed=4))


def test_old_column_names_and_columns_no_part_has(tmp_path):
    """Parts of models and evaluations written before `source` and `item_id` had their names read by the new ones;
    a column that no part has (added since) reads as null."""
    catalog = Catalog(str(tmp_path))
    old = pa.table({"name": ["m", "m"], "version": ["v1", "v2"], "pairs_set": ["s", "t"],
                    "created_at": pa.array([T0, T0], tables.UTC_TIME)})
    storage.write_bytes(storage.join(catalog.table_url("models"), "m", "part-old.parquet"), to_parquet_bytes(old))
    catalog.write_part("models", "m", "new", [{"name": "m", "version": "v2", "source": "pairs:u",
                                              "created_at": T0 + timedelta(seconds=1)}])
    old_eval = pa.table({"evaluation_id": ["e"], "method": ["model"], "scope": ["image"], "pair_id": ["p1"],
                         "pairs_set": ["s"], "psnr_y": [30.0], "created_at": pa.array([T0], tables.UTC_TIME)})
    storage.write_bytes(storage.join(catalog.table_url("evaluations"), "m", "part-old.parquet"),
                        to_parquet_bytes(old_eval))
    con = sql.connect(catalog.workspace, ["models", "evaluations"])
    assert con.sql("select version, source from models order by 1").fetchall() == [("v1", "s"), ("v2", "pairs:u")]
    assert con.sql("select item_id, source, miou from evaluations").fetchall() == [("p1", "s", None)]
    for table in ("models", "evaluations"):
        assert rows_of(con.sql(f"select * from {table}").to_arrow_table(), table) == \
            rows_of(catalog.read(table), table)


def test_empty_workspace_has_empty_views(tmp_path):
    result = sql.query(str(tmp_path), "select count(*) as n, count(distinct uri) as u from images")
    assert result.to_pylist() == [{"n": 0, "u": 0}]
    assert "created_at" in sql.query(str(tmp_path), "describe predictions")["column_name"].to_pylist()


def test_a_bad_query_is_one_clear_error(tmp_path):
    fill(str(tmp_path), seed=5)
    for text, said in [("select nosuch from images", "nosuch"), ("selec 1", "syntax error"),
                       ("select * from imagez", "imagez"), ("select * from 'no/such.parquet'", "no/such.parquet")]:
        with pytest.raises(ConfigError) as err:
            sql.query(str(tmp_path), text)
        assert err.value.message.startswith("SQL: ") and said in err.value.message
        assert "\n" not in err.value.message


def test_a_part_deleted_under_a_query_is_listed_again(tmp_path, monkeypatch):
    """A compaction that merges parts after the views were made: the query lists again and reads the merged part."""
    catalog = fill(str(tmp_path), seed=6)
    expected = catalog.read("images").num_rows
    real = sql.register
    calls = []

    def register_then_compact(con, cat, names):
        listed = real(con, cat, names)
        if not calls:  # the first views name parts that the compaction below deletes
            catalog.compact("images", "g1", max_small_parts=1)
            catalog.compact("images", "g2", max_small_parts=1)
        calls.append(names)
        return listed

    monkeypatch.setattr(sql, "register", register_then_compact)
    assert sql.query(str(tmp_path), "select count(*) as n from images")["n"].to_pylist() == [expected]
    assert len(calls) == 2


def test_the_polars_recipe_in_the_readme(tmp_path):
    """README's Polars lines, as written there: the same rows as the catalog for images and pairs."""
    pl = pytest.importorskip("polars")
    catalog = fill(str(tmp_path / "ws"), seed=7)
    workspace = str(tmp_path / "ws")
    import glob

    files = sorted(glob.glob(f"{workspace}/catalog/images/*/*.parquet"))
    images = (pl.scan_parquet(files).with_row_index("row")
              .sort(["ingested_at", "row"], nulls_last=False)
              .unique(subset=["dataset", "uri"], keep="last").drop("row").collect())
    files = sorted(glob.glob(f"{workspace}/catalog/pairs/*/*.parquet"))
    pairs = (pl.scan_parquet(files).with_row_index("row")
             .with_columns(ok=pl.col("status").eq("ok").fill_null(False))
             .sort(["ok", "created_at", "row"], nulls_last=False)
             .unique(subset=["set_name", "pair_id"], keep="last").drop("row", "ok").collect())
    assert rows_of(images.to_arrow(), "images") == rows_of(catalog.read("images"), "images")
    assert rows_of(pairs.to_arrow(), "pairs") == rows_of(catalog.read("pairs"), "pairs")
    assert len(files) == len(catalog.part_uris("pairs"))  # the glob sees the parts the catalog lists
    assert pq.read_table(files[0]).num_rows > 0


def test_the_duckdb_recipe_in_the_readme(tmp_path):
    """README's plain DuckDB query (a glob, no pixelmill): the same rows as the catalog."""
    import duckdb

    catalog = fill(str(tmp_path / "ws"), seed=8)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    images = con.sql(f"""
        select * exclude (filename, file_row_number)
        from read_parquet('{tmp_path}/ws/catalog/images/*/*.parquet', filename = true, file_row_number = true)
        qualify row_number() over (partition by dataset, uri
                                   order by ingested_at desc nulls last, filename desc, file_row_number desc) = 1
        """).to_arrow_table()
    pairs = con.sql(f"""
        select * exclude (filename, file_row_number)
        from read_parquet('{tmp_path}/ws/catalog/pairs/*/*.parquet', filename = true, file_row_number = true)
        qualify row_number() over (partition by set_name, pair_id
                                   order by coalesce(status = 'ok', false) desc, created_at desc nulls last,
                                            filename desc, file_row_number desc) = 1
        """).to_arrow_table()
    assert rows_of(images, "images") == rows_of(catalog.read("images"), "images")
    assert rows_of(pairs, "pairs") == rows_of(catalog.read("pairs"), "pairs")
