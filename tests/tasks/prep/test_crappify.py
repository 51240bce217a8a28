"""Crappify without Prefect: planning, pairs and files, determinism, masks, resume, bad input."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import ConfigError, StorageError
from pixelmill.tasks.prep.crappify import CrappifyConfig, crappify_shard, pair_name, plan_crappify
from tests.helpers import crappify_local, ingest_local, noise_png


@pytest.fixture
def photos(tmp_path):
    src = tmp_path / "src"
    for i in range(7):
        storage.write_bytes(str(src / f"p{i}.png"), noise_png(64 + 8 * i, 48, i))
    storage.write_bytes(str(src / "dup.png"), noise_png(64, 48, 0))  # duplicate of p0: no second pair
    storage.write_bytes(str(src / "broken.png"), b"not an image")
    ws = str(tmp_path / "ws")
    ingest_local(str(src), ws)
    return ws


def files_under(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_sr_pairs_have_exact_sizes_and_mirrored_names(photos):
    rows = crappify_local(photos, recipe="sr-x4", shard_size=3)
    assert len(rows) == 7 and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        assert (r["hr_width"] % 4, r["hr_height"] % 4) == (0, 0)
        assert (r["lr_width"] * 4, r["lr_height"] * 4) == (r["hr_width"], r["hr_height"])
        # modcrop only crops: the HR target is the source, its crop recorded (nothing written under hr/)
        assert r["hr_kind"] == "source" and r["hr_uri"] == r["image_uri"] and r["hr_sha256"] == r["image_sha256"]
        assert r["hr_crop"] in (None, [0, 0, r["hr_width"], r["hr_height"]])
        assert f"/{r['split']}/lr/" in r["lr_uri"]
        assert Image.open(io.BytesIO(storage.read_bytes(r["lr_uri"]))).size == (r["lr_width"], r["lr_height"])
        assert json.loads(r["params"])["recipe_hash"] == r["recipe_hash"]
    assert not os.path.exists(os.path.join(photos, "datasets", "d-sr-x4", "train", "hr"))


def test_lesson7_writes_jpeg_inputs_and_records_the_quality(photos):
    rows = crappify_local(photos, recipe="lesson7")
    for r in rows:
        lr = Image.open(io.BytesIO(storage.read_bytes(r["lr_uri"])))
        assert lr.format == "JPEG" and lr.size[0] <= r["hr_width"] and lr.size[1] <= r["hr_height"]
        assert min(lr.size) == min(96, r["hr_width"], r["hr_height"])  # short side 96, never enlarged
        quality = json.loads(r["params"])["steps"][-1]["quality"]
        assert 10 <= quality <= 70


def test_same_inputs_give_identical_bytes_whatever_the_sharding(photos, tmp_path):
    crappify_local(photos, recipe="realistic", shard_size=1, name="a", threads=1)
    crappify_local(photos, recipe="realistic", shard_size=5, name="b", threads=4)
    root = os.path.join(photos, "datasets")
    a, b = files_under(os.path.join(root, "a")), files_under(os.path.join(root, "b"))
    assert a.keys() == b.keys() and len(a) == 7  # the LR inputs: realistic's HR targets refer to the sources
    assert all(a[k] == b[k] for k in a)
    other = crappify_local(photos, recipe="realistic", name="c", seed=1)
    c = files_under(os.path.join(root, "c"))
    assert sum(a[k] != c[k] for k in a if "/lr/" in k) == len(other)  # another seed, other draws


def test_rerun_makes_only_missing_pairs_and_resumes_after_a_crash(photos):
    cfg = {"recipe": "dejpeg", "shard_size": 3}
    plan = plan_crappify(Catalog(photos), "d", CrappifyConfig(**cfg))
    assert [len(s.jobs) for s in plan.shards] == [3, 3, 1]
    crappify_shard(plan.shards[0], photos, CrappifyConfig(**cfg))  # then the run "crashes"
    resumed = plan_crappify(Catalog(photos), "d", CrappifyConfig(**cfg))
    assert resumed.existing == 3 and sum(len(s.jobs) for s in resumed.shards) == 4
    rows = crappify_local(photos, **cfg)
    assert len(rows) == 7 and len({r["pair_id"] for r in rows}) == 7
    assert plan_crappify(Catalog(photos), "d", CrappifyConfig(**cfg)).shards == []


def test_a_set_cannot_mix_recipes(photos):
    crappify_local(photos, recipe="dejpeg", name="mixed")
    with pytest.raises(ConfigError, match="another recipe definition"):
        plan_crappify(Catalog(photos), "d", CrappifyConfig(recipe="denoise", name="mixed"))


def test_split_filter_and_empty_dataset(photos, tmp_path):
    # images in every split, so that the filter has some to keep and some to drop (the fixture's are all train)
    src, ws = tmp_path / "split-src", str(tmp_path / "split-ws")
    for i in range(12):
        storage.write_bytes(str(src / f"s{i:02d}.png"), noise_png(48 + 4 * i, 40, 100 + i))
    ingest_local(str(src), ws, split_fractions=(0.5, 0.25, 0.25))
    images = Catalog(ws).read("images", "d").to_pylist()
    by_split = {split: {r["uri"] for r in images if r["split"] == split and r["status"] == "ok"}
                for split in ("train", "valid", "test")}
    assert by_split["train"] and by_split["valid"] and by_split["test"], by_split
    for split in ("train", "valid"):
        pairs = crappify_local(ws, recipe="colorize", split=split, name=f"{split}-only")
        assert {r["image_uri"] for r in pairs} == by_split[split]  # all of its split, nothing of the others
        assert {(r["split"], r["status"]) for r in pairs} == {(split, "ok")}
    with pytest.raises(ConfigError, match="no ok images in data set 'nope'"):
        plan_crappify(Catalog(photos), "nope", CrappifyConfig())


def test_unknown_recipe_and_bad_yaml_fail_before_any_work(photos, tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'nope'.*lesson7"):
        plan_crappify(Catalog(photos), "d", CrappifyConfig(recipe="nope"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - {op: jpeg, quality: [70, 10]}\n")
    with pytest.raises(ConfigError, match="steps.0.quality"):
        plan_crappify(Catalog(photos), "d", CrappifyConfig(recipe=str(bad)))
    assert not os.path.exists(os.path.join(photos, "datasets"))


def test_an_image_that_disappeared_becomes_an_error_row(tmp_path):
    src, ws = tmp_path / "src", str(tmp_path / "ws")
    for i in range(3):
        storage.write_bytes(str(src / f"{i}.png"), noise_png(32, 32, i))
    ingest_local(str(src), ws)
    os.remove(src / "1.png")
    rows = {r["image_uri"].rsplit("/", 1)[1]: r for r in crappify_local(ws, recipe="sr-x2")}
    assert rows["1.png"]["status"] == "error" and "does not exist" in rows["1.png"]["error"]
    assert rows["1.png"]["hr_uri"] is None
    assert rows["0.png"]["status"] == rows["2.png"]["status"] == "ok"


def test_masks_travel_with_the_pair_resized_nearest(tmp_path):
    images, masks, ws = tmp_path / "img", tmp_path / "ann", str(tmp_path / "ws")
    labels = np.random.default_rng(3).integers(0, 12, (50, 70), np.uint8)
    storage.write_bytes(str(images / "a.png"), noise_png(70, 50, 1))
    buf = io.BytesIO()
    Image.fromarray(labels, "L").save(buf, "PNG")
    storage.write_bytes(str(masks / "a.png"), buf.getvalue())
    ingest_local(str(images), ws, masks=str(masks))
    (row,) = crappify_local(ws, recipe="sr-x2")
    mask = np.asarray(Image.open(io.BytesIO(storage.read_bytes(row["mask_uri"]))))
    assert mask.shape == (row["lr_height"], row["lr_width"]) == (25, 35)
    assert set(np.unique(mask)) <= set(np.unique(labels))  # labels kept, never blended
    assert np.array_equal(mask, labels[1::2, 1::2])  # PIL samples the centre of each 2x2 block


def test_a_process_pool_gives_the_same_bytes_as_one_process(photos):
    config = CrappifyConfig(recipe="lesson7", name="pool")
    plan = plan_crappify(Catalog(photos), "d", config)
    crappify_shard(plan.shards[0], photos, config, processes=2)
    pooled = {r["pair_id"]: storage.read_bytes(r["lr_uri"]) for r in Catalog(photos).read("pairs", "pool").to_pylist()}
    inline = {r["pair_id"]: storage.read_bytes(r["lr_uri"]) for r in crappify_local(photos, recipe="lesson7", name="one")}
    assert len(pooled) == 7 and pooled == inline


def test_long_stems_make_pairs_with_bounded_names(tmp_path):
    src, ws = tmp_path / "src", str(tmp_path / "ws")
    long_ascii, long_unicode = "a" * 214, "é" * 125  # 214 characters; 250 bytes of UTF-8
    for i, stem in enumerate((long_ascii, long_unicode)):
        storage.write_bytes(str(src / f"{stem}.png"), noise_png(32, 32, i))
    ingest_local(str(src), ws)
    rows = crappify_local(ws, recipe="lesson7")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
    names = {r["image_uri"].rsplit("/", 1)[1]: r["lr_uri"].rsplit("/", 1)[1] for r in rows}
    sha = {r["image_uri"].rsplit("/", 1)[1]: r["image_sha256"] for r in rows}
    assert names[f"{long_ascii}.png"] == f"{long_ascii}-{sha[f'{long_ascii}.png'][:10]}.jpg"  # short enough: kept
    assert names[f"{long_unicode}.png"].startswith("é" * 100) and len(names[f"{long_unicode}.png"].encode()) <= 255
    for r in rows:
        assert os.path.isfile(r["hr_uri"].removeprefix("file://")) and os.path.isfile(r["lr_uri"].removeprefix("file://"))


def test_an_output_that_cannot_be_written_is_that_images_error_row(photos):
    config = CrappifyConfig(recipe="sr-x2", name="blocked")
    plan = plan_crappify(Catalog(photos), "d", config)
    job = plan.shards[0].jobs[1]
    # A folder where the file must go: fails for root too, unlike a read-only folder.
    lr = os.path.join(photos, "datasets", "blocked", job.split, "lr", f"{pair_name(job)}.png")
    os.makedirs(lr)
    rows = {r["image_uri"]: r for r in crappify_local(photos, **config.model_dump(exclude_none=True))}
    assert len(rows) == 7
    failed = rows[job.image_uri]
    assert failed["status"] == "error" and failed["error"].startswith("write_failed: IsADirectoryError")
    assert failed["lr_uri"] is None
    assert all(r["status"] == "ok" for uri, r in rows.items() if uri != job.image_uri)


def test_a_store_that_takes_no_file_fails_the_shard(photos):
    config = CrappifyConfig(recipe="sr-x2", name="nowhere")
    plan = plan_crappify(Catalog(photos), "d", config)
    storage.write_bytes(os.path.join(photos, "datasets", "nowhere"), b"a file where the set's folder goes")
    with pytest.raises(StorageError, match="cannot write to .*nowhere"):
        crappify_shard(plan.shards[0], photos, config)
    assert Catalog(photos).read("pairs", "nowhere").num_rows == 0  # no rows recording the store's fault


def test_overlapping_runs_with_different_splits_leave_one_row_per_pair(photos):
    from pixelmill.tasks.training.datasets import load_pairs

    catalog = Catalog(photos)
    everything = CrappifyConfig(recipe="sr-x2", split="all", shard_size=2)
    train_only = CrappifyConfig(recipe="sr-x2", split="train", shard_size=3)
    plans = [(plan_crappify(catalog, "d", cfg), cfg) for cfg in (everything, train_only)]  # both plan first
    for plan, cfg in plans:
        for shard in plan.shards:
            crappify_shard(shard, photos, cfg)
    on_disk = [r["pair_id"] for _, t in catalog.read_parts("pairs", "d-sr-x2") for r in t.to_pylist()]
    train_pairs = sum(1 for s in plans[1][0].shards for _ in s.jobs)
    assert train_pairs > 0 and len(on_disk) > 7  # the overlap really wrote duplicates (equal chunks share a part)
    pairs = catalog.read("pairs", "d-sr-x2")["pair_id"].to_pylist()
    assert len(pairs) == len(set(pairs)) == 7
    records, _ = load_pairs(catalog, "d-sr-x2", "train")
    assert len(records) == len({r.pair_id for r in records}) == train_pairs
    assert catalog.compact("pairs", "d-sr-x2") == len(on_disk) - 7
    on_disk = [r["pair_id"] for _, t in catalog.read_parts("pairs", "d-sr-x2") for r in t.to_pylist()]
    assert sorted(on_disk) == sorted(pairs)


def test_a_rerun_retries_error_pairs_and_the_ok_row_replaces_the_error(photos):
    rows = crappify_local(photos, recipe="sr-x2")
    catalog = Catalog(photos)
    victim = rows[0]["pair_id"]
    for uri, table in catalog.read_parts("pairs", "d-sr-x2"):  # as if writing its files had failed
        catalog.replace_part(uri, [r | {"status": "error", "error": "write_failed: disk full"}
                                   if r["pair_id"] == victim else r for r in table.to_pylist()], "pairs")
    plan = plan_crappify(catalog, "d", CrappifyConfig(recipe="sr-x2"))
    assert [j.image_uri for s in plan.shards for j in s.jobs] == [rows[0]["image_uri"]] and plan.existing == 6
    crappify_local(photos, recipe="sr-x2")
    assert {r["status"] for r in catalog.read("pairs", "d-sr-x2").to_pylist()} == {"ok"}  # before compaction too
    assert catalog.compact("pairs", "d-sr-x2") == 1
    assert sum(t.num_rows for _, t in catalog.read_parts("pairs", "d-sr-x2")) == 7


def test_shard_size_follows_the_work_and_the_workers():
    from pixelmill.tasks.core.shards import MAX_SHARD, MIN_SHARD, SHARDS_PER_WORKER, auto_shard_size

    assert auto_shard_size(10, 2) == MIN_SHARD  # small runs: one task, not one per handful of images
    assert auto_shard_size(1000, 2) == 125  # 4 shards per worker
    assert -(-1000 // auto_shard_size(1000, 2)) == SHARDS_PER_WORKER * 2
    assert auto_shard_size(10**6, 2) == MAX_SHARD  # huge runs: bounded retry and memory per shard
    assert auto_shard_size(1001, 1) == 251  # rounded up: never a fifth, tiny shard


def test_defaults_use_every_core_and_plan_shards_for_them(photos):
    config = CrappifyConfig()
    assert config.workers == len(os.sched_getaffinity(0)) and config.shard_size is None
    plan = plan_crappify(Catalog(photos), "d", CrappifyConfig(workers=1))
    assert [len(s.jobs) for s in plan.shards] == [7]  # 7 images: one shard of at most MIN_SHARD
    plan = plan_crappify(Catalog(photos), "d", CrappifyConfig(workers=1, shard_size=3))
    assert [len(s.jobs) for s in plan.shards] == [3, 3, 1]


def test_a_pool_whose_child_died_is_replaced_for_the_retry(photos):
    """kill -9 of a pool child (the OOM killer's way) fails that shard with BrokenProcessPool; the task's retry
    must get a fresh pool, not the broken one again."""
    import signal
    import time
    from concurrent.futures.process import BrokenProcessPool

    from pixelmill.tasks.prep.crappify import close_pools, image_pool, start_pool

    close_pools()
    config = CrappifyConfig(recipe="lesson7", name="broken-pool", workers=2)
    plan = plan_crappify(Catalog(photos), "d", config)
    start_pool(2)
    pool = image_pool(2)
    deadline = time.time() + 60
    while len(pool._processes) < 2 and time.time() < deadline:  # noqa: SLF001  (the children to kill)
        time.sleep(0.05)
    for pid in list(pool._processes):  # noqa: SLF001
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(BrokenProcessPool):
        crappify_shard(plan.shards[0], photos, config, processes=2)
    result = crappify_shard(plan.shards[0], photos, config, processes=2)  # the retry
    assert image_pool(2) is not pool and result.counts == {"ok": 7}
    close_pools()
