"""The ingest logic without Prefect: planning, one shard end to end, masks, and the data-set tidy-up."""

import os
import time
import zipfile
from collections import Counter

import pytest
from pydantic import ValidationError

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.names import unsafe_reason
from pixelmill.tasks.prep.ingest import (
    IngestConfig,
    assign_split,
    dataset_name_for,
    existing_versions,
    finalize_dataset,
    ingest_shard,
    plan_ingest,
)
from tests.helpers import crappify_local, ingest_local, noise_png


def test_sample_files_give_the_expected_rows(sample_folder, tmp_path):
    root, expected = sample_folder
    rows = {r["uri"]: r for r in ingest_local(str(root), str(tmp_path), shard_size=7).read("images", "d").to_pylist()}
    assert len(rows) == len(expected)  # README.txt is not an image: not cataloged
    for exp in expected:
        row = rows[storage.join(str(root), exp.name)]
        if exp.error_kind:
            assert row["status"] == "error" and row["error"].startswith(exp.error_kind + ":"), row
        else:
            assert (row["status"], row["width"], row["height"], row["error"]) == ("ok", exp.width, exp.height, None)
            assert row["format"] and row["mode"] and len(row["sha256"]) == 64 and row["split"] in ("train", "valid", "test")
    assert rows[storage.join(str(root), "modes/moon-16bit.png")]["mode"].startswith("I")
    assert rows[storage.join(str(root), "modes/retina-cmyk.jpg")]["mode"] == "CMYK"


def test_plan_shards_skips_unchanged_and_counts_other_files(tmp_path):
    for i in range(25):
        storage.write_bytes(str(tmp_path / f"img{i:02d}.png"), noise_png(4, 4, i))
    (tmp_path / "notes.txt").write_text("x")
    files = list(storage.iter_files(str(tmp_path)))
    plan = plan_ingest("d", files, {}, IngestConfig(shard_size=10))
    assert [len(s.files) for s in plan.shards] == [10, 10, 5]
    assert plan.other_files == 1
    again = plan_ingest("d", files, {}, IngestConfig(shard_size=10))
    assert [s.shard_id for s in again.shards] == [s.shard_id for s in plan.shards]  # deterministic
    existing = {f.uri: (f.size, f.version) for f in files[:20]}
    plan = plan_ingest("d", files, existing, IngestConfig(shard_size=10))
    assert plan.unchanged == 20 and [len(s.files) for s in plan.shards] == [5]
    assert sum(len(s.files) for s in plan_ingest("d", files, existing, IngestConfig(force=True)).shards) == 25


def test_changed_and_new_files_are_picked_up_with_one_row_per_file(tmp_path):
    src, ws = tmp_path / "src", str(tmp_path / "ws")
    for i in range(6):
        storage.write_bytes(str(src / f"{i}.png"), noise_png(8, 8, i))
    catalog = ingest_local(str(src), ws, shard_size=4)
    before = {r["uri"]: r for r in catalog.read("images", "d").to_pylist()}
    time.sleep(0.01)
    storage.write_bytes(str(src / "2.png"), noise_png(16, 8, 99))  # changed content and size
    storage.write_bytes(str(src / "new.png"), noise_png(8, 8, 100))
    after = {r["uri"]: r for r in ingest_local(str(src), ws, shard_size=4).read("images", "d").to_pylist()}
    assert len(after) == 7 and catalog.read("images", "d").num_rows == 7
    changed = storage.join(str(src), "2.png")
    assert (after[changed]["width"], before[changed]["width"]) == (16, 8)
    assert after[storage.join(str(src), "0.png")]["ingested_at"] == before[storage.join(str(src), "0.png")]["ingested_at"]


def test_duplicates_are_flagged_not_dropped(tmp_path):
    src = tmp_path / "src"
    same = noise_png(8, 8, 1)
    for name in ("a.png", "b.png", "c/d.png"):
        storage.write_bytes(str(src / name), same)
    storage.write_bytes(str(src / "other.png"), noise_png(8, 8, 2))
    rows = ingest_local(str(src), str(tmp_path / "ws"), shard_size=2).read("images", "d").to_pylist()
    dup = {r["uri"].rsplit("/", 1)[1]: r["duplicate_of"] for r in rows}
    first = storage.join(str(src), "a.png")
    assert dup == {"a.png": None, "b.png": first, "d.png": first, "other.png": None}
    assert len({r["split"] for r in rows if r["sha256"] == rows[0]["sha256"]}) == 1


def test_which_duplicate_is_the_original_does_not_depend_on_shard_order(tmp_path):
    """Shards finish in any order, and a killed run's rerun ingests the rest later: the catalog must not care."""
    src = tmp_path / "src"
    same = noise_png(8, 8, 1)
    for name in ("a.png", "m.png", "z.png"):
        storage.write_bytes(str(src / name), same if name != "m.png" else noise_png(8, 8, 2))
    results = []
    for order in ([0, 1, 2], [2, 1, 0]):
        ws, config = str(tmp_path / f"ws{order[0]}"), IngestConfig(shard_size=1)
        plan = plan_ingest("d", storage.iter_files(str(src)), {}, config)
        for i in order:  # z.png's shard first in the second run, like a run killed after committing it
            ingest_shard(plan.shards[i], ws, config)
            time.sleep(0.01)
        finalize_dataset(Catalog(ws), "d")
        results.append({r["uri"].rsplit("/", 1)[1]: r["duplicate_of"] for r in Catalog(ws).read("images", "d").to_pylist()})
    first = storage.join(str(src), "a.png")
    assert results[0] == results[1] == {"a.png": None, "m.png": None, "z.png": first}


def test_masks_from_a_folder_with_the_same_names(tmp_path):
    images, masks = tmp_path / "train", tmp_path / "trainannot"
    storage.write_bytes(str(images / "a.png"), noise_png(10, 6, 1))
    storage.write_bytes(str(masks / "a.png"), noise_png(10, 6, 1, mode="L"))
    storage.write_bytes(str(images / "b.png"), noise_png(10, 6, 2))
    storage.write_bytes(str(masks / "b.png"), noise_png(9, 6, 2, mode="L"))  # wrong size
    storage.write_bytes(str(images / "c.png"), noise_png(10, 6, 3))  # no mask
    rows = {r["uri"].rsplit("/", 1)[1]: r for r in
            ingest_local(str(images), str(tmp_path / "ws"), masks=str(masks)).read("images", "d").to_pylist()}
    assert rows["a.png"]["status"] == "ok" and rows["a.png"]["mask_uri"] == storage.join(str(masks), "a.png")
    assert rows["b.png"]["error"] == "mask_size: mask 9x6 differs from image 10x6"
    assert rows["c.png"]["error"].startswith("mask_missing:")


def test_masks_by_name_pattern_are_not_cataloged_as_images(tmp_path):
    src = tmp_path / "src"
    storage.write_bytes(str(src / "x.png"), noise_png(5, 5, 1))
    storage.write_bytes(str(src / "x_P.png"), noise_png(5, 5, 1, mode="L"))
    storage.write_bytes(str(src / "y.png"), noise_png(5, 5, 2))
    rows = ingest_local(str(src), str(tmp_path / "ws"), masks="{stem}_P.png").read("images", "d").to_pylist()
    assert sorted(r["uri"].rsplit("/", 1)[1] for r in rows) == ["x.png", "y.png"]
    assert Counter(r["status"] for r in rows) == {"ok": 1, "error": 1}


def test_assign_split_is_stable_and_follows_the_fractions():
    import hashlib

    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20000)]
    counts = Counter(assign_split(s, (0.7, 0.2, 0.1)) for s in shas)
    assert abs(counts["train"] / 20000 - 0.7) < 0.02 and abs(counts["valid"] / 20000 - 0.2) < 0.02
    assert [assign_split(s, (0.7, 0.2, 0.1)) for s in shas[:50]] == [assign_split(s, (0.7, 0.2, 0.1)) for s in shas[:50]]
    assert {assign_split(s, (1.0, 0.0, 0.0)) for s in shas} == {"train"}


@pytest.mark.parametrize("kwargs,field", [
    ({"split_fractions": (0.5, 0.2, 0.2)}, "split_fractions"),
    ({"shard_size": 0}, "shard_size"),
    ({"masks": "{name}.png"}, "stem"),
    ({"colour": "red"}, "colour"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        IngestConfig(**kwargs)


def test_dataset_name_defaults_to_the_source_base_name():
    assert dataset_name_for("s3://bucket/camvid/train/") == "train"
    assert dataset_name_for("/data/My Photos.tar.gz") == "My-Photos"


SAFE_MEMBERS = ["ok.png", "sub/deep.png", "dir\\..\\win.png", "L" * 246 + ".png", "日本の写真" * 14 + ".png"]
UNSAFE_MEMBERS = {"../../evil.png": "'..' component", "a/../../b.png": "'..' component",
                  "/abs/evil.png": "absolute path", "new\nline.png": "control character U+000A"}


def files_under(root) -> set[str]:
    return {os.path.join(d, n) for d, _, names in os.walk(root) for n in names}


def test_hostile_archive_members_each_get_one_row_and_only_safe_outputs(tmp_path):
    source, ws = tmp_path / "hostile.zip", tmp_path / "ws"
    with zipfile.ZipFile(source, "w") as zf:
        for i, name in enumerate([*SAFE_MEMBERS, *UNSAFE_MEMBERS]):
            zf.writestr(name, noise_png(32, 24, i))
    members = len(zipfile.ZipFile(source).namelist())
    before = files_under(tmp_path.parent)

    rows = {r["uri"].split("::")[0].removeprefix("zip://"): r
            for r in ingest_local(str(source), str(ws), shard_size=3).read("images", "d").to_pylist()}
    assert len(rows) == members == 9  # one row per member: none vanish, none merge
    for name, reason in UNSAFE_MEMBERS.items():
        assert (rows[name]["status"], rows[name]["error"]) == ("error", f"unsafe_name: {reason}")
        assert rows[name]["sha256"] is None and rows[name]["mask_uri"] is None  # never read
    assert all(rows[name]["status"] == "ok" for name in SAFE_MEMBERS)

    pairs = crappify_local(str(ws), recipe="sr-x2")
    assert len(pairs) == len(SAFE_MEMBERS) and {p["status"] for p in pairs} == {"ok"}
    for p in pairs:
        assert p["hr_kind"] == "source" and p["hr_uri"] == p["image_uri"]  # the member itself: nothing written
        folder, name = p["lr_uri"].rsplit("/", 1)
        assert folder.startswith(storage.join(str(ws), "datasets/d-sr-x2/"))
        assert unsafe_reason(name) is None and "\\" not in name and len(name.encode()) <= 255
    assert {p["lr_uri"].rsplit("/", 1)[1].rsplit("-", 1)[0] for p in pairs} >= {"win", "ok", "deep"}

    written = files_under(tmp_path.parent) - before
    assert written and all(path.startswith(f"{ws}/") for path in written)
    assert not any(os.path.exists(p) for p in ("/abs/evil.png", tmp_path.parent / "evil.png", tmp_path / "b.png"))


def test_a_corrupt_member_is_an_error_row_not_a_failed_shard(tmp_path):
    good, bad = noise_png(16, 16, 1), noise_png(16, 16, 2)
    source = tmp_path / "crc.zip"
    with zipfile.ZipFile(source, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("good.png", good)
        zf.writestr("bad.png", bad)
    data = bytearray(source.read_bytes())
    data[data.rindex(bad[-40:]) + 5] ^= 0xFF  # the stored bytes no longer match the member's CRC
    source.write_bytes(bytes(data))
    rows = {r["uri"].split("::")[0]: r for r in ingest_local(str(source), str(tmp_path / "ws")).read("images", "d").to_pylist()}
    assert rows["zip://good.png"]["status"] == "ok"
    assert rows["zip://bad.png"]["error"].startswith("unreadable: BadZipFile: Bad CRC-32")


def test_local_names_with_controls_or_undecodable_bytes_are_rows_and_reruns_skip_them(tmp_path):
    src, ws = tmp_path / "src", str(tmp_path / "ws")
    src.mkdir()
    for i, name in enumerate((b"ok.png", b"tab\there.png", b"bad\xff.png")):
        with open(os.path.join(bytes(src), name), "wb") as f:
            f.write(noise_png(8, 8, i))
    rows = {r["uri"].rsplit("/", 1)[1]: r for r in ingest_local(str(src), ws).read("images", "d").to_pylist()}
    assert rows["ok.png"]["status"] == "ok"
    assert rows["tab\there.png"]["error"] == "unsafe_name: control character U+0009"
    assert rows["bad\\xff.png"]["error"] == "unsafe_name: undecodable bytes in the name"  # Parquet holds UTF-8 only
    plan = plan_ingest("d", storage.iter_files(str(src)), existing_versions(Catalog(ws), "d"), IngestConfig())
    assert plan.unchanged == 3 and plan.shards == []
