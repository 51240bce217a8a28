"""The catalog at scale (issue 18): dedup, finalize and history in Arrow, and merging compaction.

The Arrow code is checked against the Python it replaced (kept here as the reference) on random tables, and the
merging compaction against readers that run between each of its steps, lined up with events, not sleeps.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import fsspec
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixelmill.tasks.core import catalog as catalog_module
from pixelmill.tasks.core import storage, tables
from pixelmill.tasks.core.catalog import Catalog, best_rows
from pixelmill.tasks.prep.ingest import finalize_dataset

T0 = datetime(2026, 1, 1, tzinfo=UTC)


# ---- the Python this replaced, as it was: the reference -----------------------------------------------------

def python_rank_column(table: pa.Table, name: str) -> list:
    import pyarrow.compute as pc

    if name == "ok":
        return pc.fill_null(pc.equal(table["status"], "ok"), False).to_pylist()
    return pc.fill_null(table[name].cast(pa.int64()), 0).to_pylist()


def python_best_rows(table: pa.Table, name: str) -> list[int] | None:
    key_cols, rank_cols = tables.table(name).key, tables.table(name).ranking
    keys = list(zip(*(table[c].to_pylist() for c in key_cols), strict=True))
    if len(set(keys)) == len(keys):
        return None
    ranks = list(zip(*(python_rank_column(table, c) for c in rank_cols), strict=True))
    best: dict[tuple, tuple[tuple, int]] = {}
    for i, (key, rank) in enumerate(zip(keys, ranks, strict=True)):
        if key not in best or (rank, i) > best[key]:
            best[key] = (rank, i)
    return sorted(i for _, i in best.values())


def python_finalize(parts: list[tuple[str, list[dict]]]) -> dict[str, list[dict]]:
    """finalize_dataset's rows per part as the Python version computed them (a part with no rows: deleted)."""
    newest: dict[str, tuple] = {}
    for uri, rows in parts:
        for row in rows:
            key = (row["ingested_at"], uri)
            if row["uri"] not in newest or key > newest[row["uri"]]:
                newest[row["uri"]] = key
    first_by_sha: dict[str, str] = {}
    for uri, rows in parts:
        for row in rows:
            if row["sha256"] and newest[row["uri"]] == (row["ingested_at"], uri):
                first_by_sha[row["sha256"]] = min(first_by_sha.get(row["sha256"], row["uri"]), row["uri"])
    out = {}
    for uri, rows in parts:
        kept = []
        for row in rows:
            if newest[row["uri"]] != (row["ingested_at"], uri):
                continue
            first = first_by_sha[row["sha256"]] if row["sha256"] else row["uri"]
            kept.append(row | {"duplicate_of": None if first == row["uri"] else first})
        out[uri] = kept
    return out


# ---- random tables ------------------------------------------------------------------------------------------

def column_values(name: str, field: pa.Field):
    if name == "status":
        return st.sampled_from(["ok", "error", None])
    if pa.types.is_timestamp(field.type):
        return st.one_of(st.none(), st.integers(0, 4).map(lambda m: T0 + timedelta(minutes=m)))
    return st.one_of(st.none(), st.sampled_from(["a", "b", "é", "", "A"]))


def random_table(name: str):
    """A table with the key and ranking columns of `name`, few distinct values (many ties), in two chunks."""
    decl = tables.table(name)
    columns = list(dict.fromkeys([*decl.key, *(c if c != "ok" else "status" for c in decl.ranking)]))
    schema = pa.schema([decl.schema.field(c) for c in columns])
    rows = st.lists(st.fixed_dictionaries({c: column_values(c, schema.field(c)) for c in columns}), max_size=30)

    def table(rows_and_cut):
        rows, cut = rows_and_cut
        table = pa.Table.from_pylist(rows, schema=schema)
        cut = min(cut, len(rows))  # two chunks, as a read of several parts gives
        return pa.concat_tables([table.slice(0, cut), table.slice(cut)])

    return st.tuples(rows, st.integers(0, 30)).map(table)


@pytest.mark.parametrize("name", ["images", "pairs", "evaluations", "predictions"])
def test_arrow_dedup_equals_the_python_dedup(name):
    @settings(max_examples=200, deadline=None)
    @given(random_table(name))
    def check(table):
        new, old = best_rows(table, name), python_best_rows(table, name)
        assert (new if new is None else new.to_pylist()) == old

    check()


@st.composite
def image_parts(draw) -> list[list[dict]]:
    """Parts of an images group: files that were re-ingested, content shared between files, no content, ties."""
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        rows = []
        for _ in range(draw(st.integers(0, 6))):
            name = draw(st.sampled_from(["a.png", "b.png", "B.png", "c/d.png", "é.png"]))
            sha = draw(st.sampled_from(["s1", "s2", "s3", "", None]))
            rows.append({"dataset": "d", "uri": f"file:///src/{name}", "sha256": sha, "status": "ok",
                         "duplicate_of": draw(st.sampled_from([None, "file:///src/a.png", "file:///src/x.png"])),
                         "ingested_at": T0 + timedelta(minutes=draw(st.integers(0, 2)))})
        parts.append(rows)
    return parts


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=image_parts())
def test_arrow_finalize_equals_the_python_finalize(parts, tmp_path_factory):
    cat = Catalog(str(tmp_path_factory.mktemp("ws")))
    uris = [cat.write_part("images", "d", f"p{i}", rows) if rows else None for i, rows in enumerate(parts)]
    on_storage = [(uri, part.to_pylist()) for uri, part in cat.read_parts("images", "d")]
    expected = python_finalize(on_storage)
    changed = sum(kept != rows for (_, rows), kept in zip(on_storage, expected.values(), strict=True))
    assert finalize_dataset(cat, "d") == changed
    after = {uri: part.to_pylist() for uri, part in cat.read_parts("images", "d")}
    assert after == {uri: rows for uri, rows in expected.items() if rows}
    assert len([u for u in uris if u]) == len(on_storage)


# ---- merging compaction -------------------------------------------------------------------------------------

def pair(pair_id: str, status: str, minute: int) -> dict:
    return {"pair_id": pair_id, "set_name": "s", "status": status, "split": "train",
            "created_at": T0 + timedelta(minutes=minute), "error": None if status == "ok" else "boom"}


def history(cat: Catalog, parts: int = 30, rows: int = 5) -> None:
    """`parts` small parts of pairs, each re-making two pairs an earlier part made (some attempts failed)."""
    for p in range(parts):
        made = [pair(f"p{p * rows + i:04d}", "ok", p) for i in range(rows)]
        redone = [pair(f"p{max(p - 3, 0) * rows + i:04d}", "error" if p % 4 == 0 else "ok", p) for i in range(2)]
        cat.write_part("pairs", "s", f"shard{p:03d}", made + redone)


def on_storage(cat: Catalog, table: str = "pairs", group: str = "s") -> list[dict]:
    return [row for _, part in cat.read_parts(table, group) for row in part.to_pylist()]


def by_key(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: r["pair_id"])


@pytest.mark.parametrize("where", ["tmp_path", "memory_url"])
def test_merging_compaction_keeps_every_best_row_and_bounds_parts(where, request):
    cat = Catalog(str(request.getfixturevalue(where)))
    history(cat)
    before = by_key(cat.read("pairs", "s").to_pylist())
    rows_before = len(on_storage(cat))
    assert len(cat.part_uris("pairs", "s")) == 30

    removed = cat.compact("pairs", "s", target_rows=40, max_small_parts=4)
    assert removed == rows_before - len(before)
    after = on_storage(cat)
    assert by_key(after) == before  # exactly the best row of every key: nothing beaten, nothing lost
    names = [u.rsplit("/", 1)[1] for u in cat.part_uris("pairs", "s")]
    assert len(names) <= len(before) // 40 + 1 and all(n.startswith("part-merged-") for n in names)
    sizes = sorted(part.num_rows for _, part in cat.read_parts("pairs", "s"))
    assert all(size >= 40 for size in sizes[1:])  # at most one part under the target: the last merged
    assert by_key(cat.read("pairs", "s").to_pylist()) == before

    # the next run's compaction has nothing to merge until small parts pile up again
    assert cat.compact("pairs", "s", target_rows=40, max_small_parts=4) == 0
    assert [u.rsplit("/", 1)[1] for u in cat.part_uris("pairs", "s")] == names
    for p in range(5):
        cat.write_part("pairs", "s", f"night{p}", [pair(f"n{p}", "ok", 100 + p), pair("p0000", "ok", 100 + p)])
    assert cat.compact("pairs", "s", target_rows=40, max_small_parts=4) == 5  # p0000: the merged row, 4 nights
    assert len(cat.part_uris("pairs", "s")) <= (len(before) + 5) // 40 + 1
    rows = on_storage(cat)
    assert len(rows) == len({r["pair_id"] for r in rows}) == len(before) + 5


def test_few_small_parts_are_not_merged():
    """Below MAX_SMALL_PARTS, compaction rewrites only the parts holding beaten rows (the old behaviour)."""
    cat = Catalog("memory://pixelmill-test-few-parts")
    try:
        history(cat, parts=5)
        names = cat.part_uris("pairs", "s")
        cat.compact("pairs", "s")
        assert cat.part_uris("pairs", "s") == names
    finally:
        storage.remove("memory://pixelmill-test-few-parts")


class Lockstep:
    """The compaction stops after each change it makes on storage (a write or a delete) until a reader has read.

    `stale=False`: the reader reads whole between two changes. `stale=True`: the reader lists the parts, then the
    compaction makes its next change, then the reader reads what it listed (a part may be gone: it lists again).
    """

    def __init__(self, stale: bool):
        self.stale = stale
        self.cond = threading.Condition()
        self.turn = "compaction"
        self.finished = False
        self.compactor: threading.Thread | None = None
        self.changes = 0

    def _wait_for(self, who: str) -> None:
        assert self.cond.wait_for(lambda: self.turn == who or self.finished, timeout=30), f"stuck waiting for {who}"

    def changed(self) -> None:
        """Called by the compaction thread after each change: hand over to the reader, wait for its read."""
        if threading.current_thread() is not self.compactor:
            return
        with self.cond:
            self.changes += 1
            self.turn = "reader"
            self.cond.notify_all()
            self._wait_for("compaction")

    def reader_listed(self) -> None:
        """Called by the reader after listing (stale mode): let the compaction make one change first."""
        if not self.stale or threading.current_thread() is self.compactor:
            return
        with self.cond:
            if self.finished:
                return
            self.turn = "compaction"
            self.cond.notify_all()
            self._wait_for("reader")

    def reader_done(self) -> None:
        with self.cond:
            self.turn = "compaction"
            self.cond.notify_all()
            if not self.finished:
                self._wait_for("reader")

    def finish(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()


@pytest.mark.parametrize("stale", [False, True], ids=["between-steps", "listing-goes-stale"])
@pytest.mark.parametrize("where", ["tmp_path", "memory_url"])
def test_a_reader_never_sees_a_duplicate_or_misses_a_key_while_compaction_merges(where, stale, request,
                                                                                 monkeypatch):
    cat = Catalog(str(request.getfixturevalue(where)))
    history(cat, parts=24)
    expected = by_key(cat.read("pairs", "s").to_pylist())
    step = Lockstep(stale)
    real_write, real_remove, real_list = storage.write_bytes, storage.remove, Catalog.part_uris

    def write_bytes(uri, data):
        real_write(uri, data)
        step.changed()

    def remove(uri):
        real_remove(uri)
        step.changed()

    def part_uris(self, table, group=None):
        listed = real_list(self, table, group)
        step.reader_listed()
        return listed

    monkeypatch.setattr(storage, "write_bytes", write_bytes)
    monkeypatch.setattr(storage, "remove", remove)
    monkeypatch.setattr(Catalog, "part_uris", part_uris)

    failures: list[BaseException] = []

    def compaction():
        try:
            with step.cond:
                step._wait_for("compaction")
            cat.compact("pairs", "s", target_rows=30, max_small_parts=4)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            step.finish()

    step.compactor = threading.Thread(target=compaction)
    step.compactor.start()
    reads, seen = 0, []
    while True:
        with step.cond:
            if step.finished and reads > step.changes:
                break
        rows = Catalog(cat.workspace).read("pairs", "s").to_pylist()
        seen.append(len(rows))
        assert by_key(rows) == expected, f"read {reads} (after {step.changes} changes) differs"
        reads += 1
        step.reader_done()
    step.compactor.join(30)
    assert not failures, failures
    assert step.changes >= 4  # merged parts written and sources deleted: there were states in between
    assert by_key(on_storage(cat)) == expected


def test_a_crash_between_the_merged_write_and_the_deletes_leaves_a_readable_catalog(tmp_path, monkeypatch):
    cat = Catalog(str(tmp_path))
    history(cat, parts=24)
    expected = by_key(cat.read("pairs", "s").to_pylist())

    class Killed(Exception):
        pass

    real = Catalog.rewrite

    def crash_before_deleting(self, scan, keep, **kwargs):
        def die(sources):
            raise Killed

        return real(self, scan, keep, **kwargs | {"before_delete": die})

    monkeypatch.setattr(Catalog, "rewrite", crash_before_deleting)
    with pytest.raises(Killed):
        cat.compact("pairs", "s", target_rows=30, max_small_parts=4)
    monkeypatch.undo()
    assert len(cat.part_uris("pairs", "s")) == 25  # the merged part beside all its sources
    assert by_key(cat.read("pairs", "s").to_pylist()) == expected
    cat.compact("pairs", "s", target_rows=30, max_small_parts=4)  # the next run finishes the job
    assert by_key(on_storage(cat)) == expected
    assert len(cat.part_uris("pairs", "s")) <= len(expected) // 30 + 1


def test_a_part_rewritten_during_the_merge_is_kept(tmp_path):
    """A shard that rewrote its part after the compaction read it (a rerun) keeps it: its rows are not lost."""
    cat = Catalog(str(tmp_path))
    history(cat, parts=24)

    def rerun(sources):
        cat.write_part("pairs", "s", "shard003", [pair("p0015", "ok", 50), pair("late", "ok", 50)])

    decl = tables.table("pairs")
    scan = cat.scan("pairs", "s", [*decl.key, "status", "created_at"])
    keep = best_rows(scan.data, "pairs")
    mask = [False] * scan.data.num_rows
    for i in keep.to_pylist():
        mask[i] = True
    import numpy as np

    cat.rewrite(scan, np.array(mask), target_rows=1000, max_small_parts=4, before_delete=rerun)
    names = [u.rsplit("/", 1)[1] for u in cat.part_uris("pairs", "s")]
    assert "part-shard003.parquet" in names and len(names) == 2
    rows = {r["pair_id"]: r for r in cat.read("pairs", "s").to_pylist()}
    assert "late" in rows and rows["p0015"]["created_at"].minute == 50


def test_finalize_merges_small_image_parts_and_flags_duplicates(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog_module, "MAX_SMALL_PARTS", 3)
    monkeypatch.setattr(catalog_module, "TARGET_ROWS", 10)
    cat = Catalog(str(tmp_path))
    for night in range(8):
        rows = [{"dataset": "d", "uri": f"file:///src/{night}-{i}.png", "sha256": f"s{night}-{i}", "status": "ok",
                 "ingested_at": T0 + timedelta(days=night)} for i in range(4)]
        rows[0]["sha256"] = "shared"  # the same photo under a new name every night
        if night:
            rows[1] |= {"uri": "file:///src/0-1.png", "sha256": f"changed-{night}"}  # edited and re-ingested
        cat.write_part("images", "d", f"night{night}", rows)
    on_disk = [(u, t.to_pylist()) for u, t in cat.read_parts("images", "d")]
    expected = sorted((r for rows in python_finalize(on_disk).values() for r in rows), key=lambda r: r["uri"])
    assert finalize_dataset(cat, "d") == 8
    after = sorted(on_storage(cat, "images", "d"), key=lambda r: r["uri"])
    assert after == expected
    assert sum(r["duplicate_of"] == "file:///src/0-0.png" for r in after) == 7
    assert len(cat.part_uris("images", "d")) <= len(after) // 10 + 1
    assert finalize_dataset(cat, "d") == 0


def test_a_settled_group_costs_a_listing_until_a_part_changes(tmp_path, monkeypatch):
    cat = Catalog(str(tmp_path))
    history(cat, parts=3)
    assert cat.compact("pairs", "s") == 6  # p0000 and p0001: four rows each, three beaten
    assert cat.compact("pairs", "s") == 0  # nothing to do: says so on storage
    assert (tmp_path / "catalog" / "pairs" / "s" / ".settled-compact.json").exists()
    scans = []
    real = Catalog.scan
    monkeypatch.setattr(Catalog, "scan", lambda self, *a, **k: scans.append(a) or real(self, *a, **k))
    assert cat.compact("pairs", "s") == 0 and scans == []  # the listing matched: nothing read
    cat.write_part("pairs", "s", "shard000", [pair("p0000", "ok", 30)])  # a rerun rewrote a part
    assert cat.compact("pairs", "s") == 1 and len(scans) == 1
    assert sorted(p.name for p in (tmp_path / "catalog" / "pairs" / "s").iterdir() if p.suffix == ".parquet") == \
        [u.rsplit("/", 1)[1] for u in cat.part_uris("pairs", "s")]  # the marker is hidden from readers

    cat.write_part("images", "d", "a", [{"dataset": "d", "uri": "file:///a.png", "sha256": "x", "status": "ok",
                                         "ingested_at": T0}])
    cat.write_part("images", "d", "b", [{"dataset": "d", "uri": "file:///b.png", "sha256": "x", "status": "ok",
                                         "ingested_at": T0}])
    assert finalize_dataset(cat, "d") == 1  # b is a duplicate of a
    assert finalize_dataset(cat, "d") == 0
    scans.clear()
    assert finalize_dataset(cat, "d") == 0 and scans == []
    cat.write_part("images", "d", "c", [{"dataset": "d", "uri": "file:///0.png", "sha256": "x", "status": "ok",
                                         "ingested_at": T0}])
    assert finalize_dataset(cat, "d") == 2 and len(scans) == 1  # 0.png sorts first: a and b now duplicates of it
    assert {r["uri"]: r["duplicate_of"] for r in cat.read("images", "d").to_pylist()} == {
        "file:///0.png": None, "file:///a.png": "file:///0.png", "file:///b.png": "file:///0.png"}


def python_history(catalog: Catalog, card, output: str):
    """output_history as the Python version computed it, on the same catalog read."""
    import pyarrow.dataset as ds

    from pixelmill.tasks.core.names import collision_key
    from pixelmill.tasks.inference.plan import History

    t = catalog.read("predictions", card.name, filter=ds.field("output_root") == output,
                     columns=["model_version", "input_uri", "input_bytes", "input_version", "input_sha256", "error",
                              "status", "output_uri", "overlay_uri"])
    history = History({}, {}, {})
    cols = {c: t[c].to_pylist() for c in t.column_names}
    prefix = output.rstrip("/") + "/"
    for i, uri in enumerate(cols["input_uri"]):
        if cols["model_version"][i] == card.version:
            history.done[uri] = (cols["input_bytes"][i], cols["input_version"][i], cols["input_sha256"][i],
                                 cols["error"][i])
        written = [u for u in (cols["output_uri"][i], cols["overlay_uri"][i]) if u and u.startswith(prefix)]
        if cols["status"][i] == "ok" and written:
            for u in written:
                history.owners.setdefault(collision_key(u[len(prefix):]), uri)
            history.outputs.setdefault(uri, set()).update(written)
    return history


OUT = "memory://out/x"
NAMES = ["a.png", "A.png", "Straße.png", "STRASSE.png", "e\u0301.png", "\u00e9.png", "d/b.png", "a.overlay.png"]


@st.composite
def prediction_parts(draw) -> list[list[dict]]:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        rows = []
        for _ in range(draw(st.integers(0, 8))):
            root = draw(st.sampled_from([OUT, "memory://elsewhere"]))
            under = draw(st.sampled_from([OUT, OUT + "x", "memory://elsewhere"]))  # "x/..." is not under "x/"
            rows.append({
                "input_uri": f"memory://in/{draw(st.sampled_from(['1.jpg', '2.jpg', '3.jpg', 'é.jpg']))}",
                "input_bytes": draw(st.integers(1, 3)), "input_version": draw(st.sampled_from(["v", "w", None])),
                "input_sha256": draw(st.sampled_from(["s", None])), "output_root": root, "model": "m",
                "model_version": draw(st.sampled_from(["v1", "v2"])),
                "output_uri": draw(st.one_of(st.none(), st.sampled_from(NAMES).map(f"{under}/{{}}".format))),
                "overlay_uri": draw(st.one_of(st.none(), st.sampled_from(NAMES).map(lambda n: f"{OUT}/{n}"))),
                "status": draw(st.sampled_from(["ok", "error"])),
                "error": draw(st.sampled_from([None, "write_failed: x", "corrupt: y"])),
                "created_at": T0 + timedelta(minutes=draw(st.integers(0, 3)))})
        parts.append(rows)
    return parts


def test_arrow_history_equals_the_python_history():
    from pixelmill.tasks.core.cards import ModelCard
    from pixelmill.tasks.inference.plan import output_history

    card = ModelCard(name="m", version="v1", uri="memory://m/v1", task="restoration", arch="unet")
    counter = iter(range(10**9))

    @settings(max_examples=150, deadline=None)
    @given(prediction_parts())
    def check(parts):
        cat = Catalog(f"memory://pixelmill-test-history-{next(counter)}")
        try:
            for i, rows in enumerate(parts):
                if rows:
                    cat.write_part("predictions", "m", f"p{i}", rows)
            new, old = output_history(cat, card, OUT), python_history(cat, card, OUT)
            assert (new.done, new.owners, new.outputs) == (old.done, old.owners, old.outputs)
            assert list(new.owners) == list(old.owners)  # the same order too
        finally:
            fs = fsspec.filesystem("memory")
            if fs.exists(cat.workspace.removeprefix("memory://")):
                fs.rm(cat.workspace.removeprefix("memory://"), recursive=True)

    check()
