"""plan_ingest matches the listing against the catalog in Arrow: it must plan exactly what the per-file Python
loop over a dict of the catalog planned (the code before issue 18's planners), whatever the names. And
finalize_dataset of a data set that only gained parts reads those alone: it must leave what reading all did."""

from __future__ import annotations

import posixpath
from datetime import UTC, datetime, timedelta

import fsspec
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixelmill.tasks.core import catalog as catalog_module
from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog, extension_in, listing_table
from pixelmill.tasks.core.names import storable
from pixelmill.tasks.core.shards import auto_shard_size, chunks, shard_id
from pixelmill.tasks.core.storage import FileInfo
from pixelmill.tasks.prep import ingest as ingest_module
from pixelmill.tasks.prep.ingest import (
    LISTED_FILE,
    IngestConfig,
    finalize_dataset,
    is_pattern,
    mask_regex,
    plan_ingest,
)

ROOT = "file:///src"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
# names that differ in case, extension, dots, non-ASCII spelling and undecodable bytes (a local name's surrogates)
NAMES = ["a.png", "A.PNG", "a.jpg", ".png", "..b.png", "d/.png", "d.x/a", "d/a.b.JPG", "x.", "notes.txt", "é.png",
         "e\u0301.Png", "bad\udcff.png", "bad\udcff", "m/a.png", "m/b_mask.png", "a_mask.png", "\u212a.jpg", "k.tar.gz"]


def python_plan(dataset: str, files: list[FileInfo], existing: dict, cfg: IngestConfig) -> dict:
    """plan_ingest as the per-file loop computed it."""
    masks_root = cfg.masks if cfg.masks and not is_pattern(cfg.masks) else None
    mask_name = mask_regex(cfg.masks) if is_pattern(cfg.masks) else None
    counts = {"mask_files": 0, "other_files": 0, "unchanged": 0}
    todo = []
    for info in files:
        name = posixpath.basename(info.rel)
        if (masks_root and info.uri.startswith(masks_root + "/")) or (mask_name and mask_name.match(name)):
            counts["mask_files"] += 1
        elif posixpath.splitext(name)[1].lower() not in cfg.extensions:
            counts["other_files"] += 1
        elif not cfg.force and existing.get(storable(info.uri)) == (info.size, info.version):
            counts["unchanged"] += 1
        else:
            todo.append(info)
    settings_json = cfg.model_dump_json(exclude={"shard_size", "workers", "io_threads", "force"})
    shards = [(shard_id(dataset, settings_json, [(f.uri, f.size, f.version) for f in chunk]), tuple(chunk))
              for chunk in chunks(todo, cfg.shard_size or auto_shard_size(len(todo), cfg.workers))]
    return counts | {"shards": shards}


def arrow_plan(dataset: str, files: list[FileInfo], existing, cfg: IngestConfig) -> dict:
    plan = plan_ingest(dataset, iter(files), existing, cfg)
    return {"mask_files": plan.mask_files, "other_files": plan.other_files, "unchanged": plan.unchanged,
            "shards": [(s.shard_id, s.files) for s in plan.shards]}


@st.composite
def listings(draw) -> tuple[list[FileInfo], list[tuple[str, int | None, str | None]]]:
    """A listing (names may repeat) and catalog rows for some of its files (and others), in catalog order."""
    files = [FileInfo(f"{ROOT}/{rel}", draw(st.integers(1, 2)), draw(st.sampled_from(["v", "w", ""])), rel)
             for rel in draw(st.lists(st.sampled_from(NAMES), max_size=12))]
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        rel = draw(st.sampled_from(NAMES))
        rows.append((storable(f"{ROOT}/{rel}"), draw(st.sampled_from([1, 2, None])),
                     draw(st.sampled_from(["v", "w", "", None]))))
    return files, rows


CONFIGS = [IngestConfig(shard_size=3), IngestConfig(shard_size=2, force=True),
           IngestConfig(masks=f"{ROOT}/m"), IngestConfig(masks="{stem}_mask.png"),
           IngestConfig(extensions=("png", ".JPG", "tar.gz", ".", "kpg"))]


@settings(max_examples=300, deadline=None)
@given(listings(), st.sampled_from(CONFIGS), st.sampled_from([1, 4, 1000]))
def test_the_arrow_plan_is_the_python_plan(listing, cfg, block):
    files, rows = listing
    existing = {uri: (size, version) for uri, size, version in rows}  # a dict: the last row of a URI wins
    table = pa.table({"uri": pa.array([r[0] for r in rows], pa.string()),
                      "bytes": pa.array([r[1] for r in rows], pa.int64()),
                      "source_version": pa.array([r[2] for r in rows], pa.string())})
    old = catalog_module.LISTING_BLOCK
    catalog_module.LISTING_BLOCK = block  # blocks of one, of a few, and all at once
    try:
        want = python_plan("d", files, existing, cfg)
        assert arrow_plan("d", files, existing, cfg) == want
        assert arrow_plan("d", files, table, cfg) == want  # the catalog's view as existing_versions returns it
        if len(set(table["uri"].to_pylist())) == table.num_rows:  # as a read of a compacted data set says it
            unique = table.replace_schema_metadata({catalog_module.UNIQUE: b"uri"})
            assert arrow_plan("d", files, unique, cfg) == want
    finally:
        catalog_module.LISTING_BLOCK = old


def test_files_with_undecodable_names_come_back_as_they_were_listed():
    files = [FileInfo(f"{ROOT}/bad\udcff.png", 1, "v", "bad\udcff.png"), FileInfo(f"{ROOT}/ok.png", 1, "v", "ok.png")]
    listed, originals = listing_table(files, LISTED_FILE)
    assert listed["uri"].to_pylist() == [f"{ROOT}/bad\\xff.png", f"{ROOT}/ok.png"]  # as the catalog spells it
    assert originals == {0: files[0]}
    plan = plan_ingest("d", files, {f"{ROOT}/bad\\xff.png": (1, "v")}, IngestConfig())
    assert plan.unchanged == 1 and [s.files for s in plan.shards] == [(files[1],)]
    plan = plan_ingest("d", files, {}, IngestConfig())
    assert plan.shards[0].files == tuple(files)  # the very objects: the surrogates kept for reading the file


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="aA./é\u212a\udcff\n x", max_size=8), max_size=10))
def test_extension_in_is_splitext_lowered(names):
    extensions = {".a", ".x", ".", ".\u212a", ".é", ".aa"}
    items = [FileInfo("u", 0, "", name) for name in names]
    listed, originals = listing_table(items, LISTED_FILE)
    got = extension_in(listed, "rel", extensions, originals).tolist()
    assert got == [posixpath.splitext(name)[1].lower() in extensions for name in names]


# ---- finalize_dataset of a data set that only gained parts -------------------------------------------------

URIS = [f"file:///src/{name}" for name in ("0.png", "a.png", "b.png", "c.png", "d.png", "e.png", "f.png")]


@st.composite
def nights(draw) -> tuple[list[list[dict]], list[list[dict]]]:
    """Parts written before a finalize that had nothing to do, and parts written after it."""
    def part(night: int) -> list[dict]:
        return [{"dataset": "d", "uri": draw(st.sampled_from(URIS)), "status": "ok",
                 "sha256": draw(st.sampled_from(["x", "y", "z", "w", "", None])),
                 "duplicate_of": draw(st.sampled_from([None, URIS[1]])),
                 "ingested_at": T0 + timedelta(days=night, minutes=draw(st.integers(0, 1)))}
                for _ in range(draw(st.integers(1, 3)))]
    return ([part(0) for _ in range(draw(st.integers(1, 3)))],
            [part(1) for _ in range(draw(st.integers(1, 3)))])


def test_finalize_of_new_parts_alone_is_the_whole_finalize(monkeypatch):
    """A finalize that reads only the parts added since the data set was settled leaves the same parts, rows and
    duplicate flags, and returns the same count, as one that reads them all; and it applies when it can."""
    counter = iter(range(10**9))
    applied = []
    real = ingest_module._finalize_new_parts

    def spy(*args):
        result = real(*args)
        applied.append(result is not None)
        return result

    monkeypatch.setattr(ingest_module, "_finalize_new_parts", spy)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(nights(), st.sampled_from([2, 16]))
    def check(history, max_small):
        monkeypatch.setattr(catalog_module, "MAX_SMALL_PARTS", max_small)
        before, after = history
        results = []
        for forget in (True, False):
            cat = Catalog(f"memory://pixelmill-test-finalize-new-{next(counter)}")
            try:
                for i, rows in enumerate(before):
                    cat.write_part("images", "d", f"old{i}", rows)
                for _ in range(3):  # until it has nothing to do (a merge leaves one more)
                    finalize_dataset(cat, "d")
                for i, rows in enumerate(after):
                    cat.write_part("images", "d", f"new{i}", rows)
                marker = storage.join(cat.table_url("images"), "d", ".settled-finalize.json")
                if forget and storage.exists(marker):  # the whole data set is read
                    storage.remove(marker)
                changed = finalize_dataset(cat, "d")
                # a merged part's name hashes its sources' stamps (times here): compare what it holds
                results.append((changed, sorted((posixpath.basename(u) if "merged" not in u else "merged",
                                                 repr(part.to_pylist())) for u, part in cat.read_parts("images", "d"))))
            finally:
                fs = fsspec.filesystem("memory")
                if fs.exists(cat.workspace.removeprefix("memory://")):
                    fs.rm(cat.workspace.removeprefix("memory://"), recursive=True)
        assert results[0] == results[1]

    check()
    assert any(applied) and not all(applied)  # both ways were taken
