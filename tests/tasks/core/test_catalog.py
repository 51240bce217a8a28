import os
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import IMAGES, Catalog
from pixelmill.tasks.core.errors import ConfigError


def rows(n: int, dataset: str = "d", start: int = 0) -> list[dict]:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return [{"dataset": dataset, "uri": f"file:///x/{i}.png", "sha256": f"{i:064x}", "bytes": i, "width": 2,
             "height": 3, "status": "ok", "split": "train", "ingested_at": now} for i in range(start, start + n)]


def test_write_then_read_round_trips(tmp_path):
    cat = Catalog(str(tmp_path))
    cat.write_part("images", "d", "shard1", rows(3))
    cat.write_part("images", "e", "shard1", rows(2, "e"))
    table = cat.read("images")
    assert table.schema == IMAGES
    assert table.num_rows == 5
    assert cat.read("images", "e")["dataset"].to_pylist() == ["e", "e"]
    assert cat.groups("images") == ["d", "e"]
    # plain Parquet: any reader sees it under catalog/images/{group}/
    assert pq.read_table(os.path.join(tmp_path, "catalog", "images", "d", "part-shard1.parquet")).num_rows == 3


def test_rewriting_a_shard_replaces_its_rows(tmp_path):
    cat = Catalog(str(tmp_path))
    cat.write_part("images", "d", "shard1", rows(3))
    cat.write_part("images", "d", "shard1", rows(3))
    cat.write_part("images", "d", "shard2", rows(2, start=3))
    assert cat.read("images", "d").num_rows == 5
    assert len(cat.part_uris("images", "d")) == 2
    assert sorted(os.listdir(tmp_path / "catalog" / "images" / "d")) == ["part-shard1.parquet", "part-shard2.parquet"]


def test_replace_part_rewrites_or_deletes(memory_url):
    cat = Catalog(memory_url)
    uri = cat.write_part("images", "d", "s", rows(4))
    cat.replace_part(uri, rows(1), "images")
    assert cat.read("images", "d").num_rows == 1
    cat.replace_part(uri, [], "images")
    assert cat.part_uris("images", "d") == []


def test_empty_and_missing_tables_read_as_empty(tmp_path):
    table = Catalog(str(tmp_path / "nothing-here")).read("images", columns=["uri"])
    assert table.num_rows == 0 and table.column_names == ["uri"]


def test_columns_and_filters_push_down(tmp_path):
    import pyarrow.dataset as ds

    cat = Catalog(str(tmp_path))
    cat.write_part("images", "d", "s", rows(10))
    t = cat.read("images", "d", columns=["uri", "bytes"], filter=ds.field("bytes") >= 7)
    assert t.column_names == ["uri", "bytes"] and t["bytes"].to_pylist() == [7, 8, 9]


def test_unknown_table_and_bad_names_are_clear_errors(tmp_path):
    cat = Catalog(str(tmp_path))
    with pytest.raises(ConfigError, match="unknown table 'imagez'") as info:
        cat.read("imagez")
    assert "images" in info.value.hint
    for bad in ("", "../escape", "a/b", "-dash-first"):
        with pytest.raises(ConfigError, match="invalid group"):
            cat.write_part("images", bad, "s", rows(1))


def pair_row(pair_id: str, status: str, minute: int) -> dict:
    return {"pair_id": pair_id, "set_name": "s", "status": status, "split": "train",
            "created_at": datetime(2026, 1, 1, 0, minute, tzinfo=UTC), "error": None if status == "ok" else "boom"}


def test_readers_see_each_key_once_the_best_row(tmp_path):
    cat = Catalog(str(tmp_path))
    # two overlapping runs wrote the same pairs in different shards
    cat.write_part("pairs", "s", "a", [pair_row("p1", "ok", 1), pair_row("p2", "error", 1), pair_row("p3", "ok", 1)])
    cat.write_part("pairs", "s", "b", [pair_row("p1", "error", 5), pair_row("p2", "ok", 2), pair_row("p4", "ok", 2)])
    table = cat.read("pairs", "s")
    assert sorted(table["pair_id"].to_pylist()) == ["p1", "p2", "p3", "p4"]
    by_id = {r["pair_id"]: r for r in table.to_pylist()}
    assert by_id["p1"]["status"] == "ok"  # an ok pair (its files exist) beats a later failed attempt
    assert by_id["p2"]["status"] == "ok"
    # a column subset still deduplicates, though it names neither key nor ranking column
    assert sorted(cat.read("pairs", "s", columns=["split"])["split"].to_pylist()) == ["train"] * 4

    cat.write_part("images", "d", "old", rows(2))
    newer = rows(1)
    newer[0] |= {"ingested_at": datetime(2026, 2, 1, tzinfo=UTC), "bytes": 99}
    cat.write_part("images", "d", "new", newer)
    images = {r["uri"]: r["bytes"] for r in cat.read("images", "d").to_pylist()}
    assert images == {"file:///x/0.png": 99, "file:///x/1.png": 1}  # the newest row of a file wins


def test_compaction_removes_beaten_rows_and_repairs_old_duplicates(tmp_path):
    cat = Catalog(str(tmp_path))
    cat.write_part("pairs", "s", "a", [pair_row("p1", "ok", 1), pair_row("p2", "error", 1)])
    cat.write_part("pairs", "s", "b", [pair_row("p1", "ok", 3)])
    cat.write_part("pairs", "s", "c", [pair_row("p2", "ok", 2)])
    before = cat.read("pairs", "s").to_pylist()
    assert cat.compact("pairs", "s") == 2
    on_disk = [r for _, t in cat.read_parts("pairs", "s") for r in t.to_pylist()]
    assert sorted(r["pair_id"] for r in on_disk) == ["p1", "p2"]
    assert {(r["pair_id"], r["status"], r["created_at"].minute) for r in on_disk} == {("p1", "ok", 3), ("p2", "ok", 2)}
    assert len(cat.part_uris("pairs", "s")) == 2  # part a lost both rows and is gone
    assert cat.read("pairs", "s").to_pylist() == before  # readers saw the same before and after
    assert cat.compact("pairs", "s") == 0


@pytest.mark.parametrize("workspace", ["tmp_path", "memory_url"])
def test_reads_and_compactions_survive_a_part_removed_by_another_runs_compaction(workspace, request, monkeypatch):
    """Found by tests/faults: a reader listed part `a`, another run's compaction removed it, the read failed."""
    cat = Catalog(str(request.getfixturevalue(workspace)))
    beaten = [pair_row("p1", "error", 1)]  # all of part a loses to part b: a compaction removes the part
    cat.write_part("pairs", "s", "b", [pair_row("p1", "ok", 2), pair_row("p2", "ok", 2)])
    cat.write_part("pairs", "s", "c", [pair_row("p3", "ok", 2)])
    real = Catalog.part_uris

    def listed_then_compacted(self, table, group=None):
        listed = real(self, table, group)
        if any(uri.endswith("part-a.parquet") for uri in listed):
            storage.remove(listed[0])  # the other run's compaction, right after this listing
        return listed

    monkeypatch.setattr(Catalog, "part_uris", listed_then_compacted)
    cat.write_part("pairs", "s", "a", beaten)
    assert sorted(cat.read("pairs", "s")["pair_id"].to_pylist()) == ["p1", "p2", "p3"]
    cat.write_part("pairs", "s", "a", beaten)
    assert [uri.rsplit("/", 1)[1] for uri, _ in cat.read_parts("pairs", "s")] == ["part-b.parquet", "part-c.parquet"]
    cat.write_part("pairs", "s", "a", beaten)
    assert cat.compact("pairs", "s") == 0  # what was left to do, the other run did
    monkeypatch.undo()
    assert len(cat.part_uris("pairs", "s")) == 2


def write_legacy_part(workspace: str, table: str, group: str, part: str, rows: list[dict]) -> None:
    """A part as versions before the renames wrote it: evaluations with `pairs_set` and `pair_id`."""
    import io

    import pyarrow as pa

    from pixelmill.tasks.core.tables import TABLES

    renamed = {new: old for old, new in TABLES[table].legacy.items()}
    old_schema = pa.schema([pa.field(renamed.get(f.name, f.name), f.type) for f in TABLES[table].schema])
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), buf)
    storage.write_bytes(storage.join(Catalog(workspace).table_url(table), group, f"part-{part}.parquet"),
                        buf.getvalue())


def eval_row(item: str | None, minute: int, new_names: bool, source: str = "photos-sr-x2") -> dict:
    names = ("source", "item_id") if new_names else ("pairs_set", "pair_id")
    return {"evaluation_id": "e1", "model": "sr:v1", names[0]: source, "split": "valid", "method": "model",
            "scope": "image", names[1]: item, "psnr_y": float(minute),
            "created_at": datetime(2026, 1, 1, 0, minute, tzinfo=UTC)}


def test_parts_with_the_old_column_names_read_by_the_new_ones(tmp_path):
    """Catalogs written before `pairs_set` became `source` and `pair_id` became `item_id` still read and dedup.

    Old values keep their bare names (no `pairs:` prefix is guessed): readers take a bare source as written."""
    import pyarrow.dataset as ds

    cat = Catalog(str(tmp_path))
    write_legacy_part(str(tmp_path), "evaluations", "sr", "old", [eval_row("p1", 1, False), eval_row("p2", 1, False)])
    write_legacy_part(str(tmp_path), "models", "sr", "v1", [{"name": "sr", "version": "v1", "pairs_set": "photos"}])
    cat.write_part("evaluations", "sr", "new", [eval_row("p1", 5, True, "pairs:photos-sr-x2")])

    table = cat.read("evaluations", "sr")
    assert "pairs_set" not in table.column_names and "pair_id" not in table.column_names
    rows = {r["item_id"]: (r["source"], r["psnr_y"]) for r in table.to_pylist()}
    assert rows == {"p1": ("pairs:photos-sr-x2", 5.0), "p2": ("photos-sr-x2", 1.0)}  # p1: the newer part wins
    assert cat.read("models")["source"].to_pylist() == ["photos"]
    # columns and filters name the new columns, whatever the parts hold
    picked = cat.read("evaluations", "sr", columns=["source"], filter=ds.field("item_id") == "p2")
    assert picked.to_pylist() == [{"source": "photos-sr-x2"}]
    assert sorted(cat.read("evaluations", columns=["source"])["source"].to_pylist()) == [
        "pairs:photos-sr-x2", "photos-sr-x2"]

    # a compaction removes the beaten old row and writes what it rewrites in today's columns
    assert cat.compact("evaluations", "sr") == 1
    on_disk = {uri.rsplit("/", 1)[1]: part for uri, part in cat.read_parts("evaluations", "sr")}
    assert on_disk["part-old.parquet"]["item_id"].to_pylist() == ["p2"]
    assert pq.read_schema(os.path.join(tmp_path, "catalog", "evaluations", "sr", "part-old.parquet")).names == \
        cat.read("evaluations").column_names
    assert cat.read("evaluations", "sr").num_rows == 2
