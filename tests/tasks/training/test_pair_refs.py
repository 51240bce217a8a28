"""Pairs that refer to their source instead of copying it: what is stored, and that every reader gets the pixels
the written copies held (training, evaluation, the GAN stage), and never those of a source changed since."""

import hashlib
import io
import logging
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.core.images import ImageFacts, normalize_mode, open_image
from pixelmill.tasks.core.pairs import HrRef, SourceChanged, check_sources, load_hr
from pixelmill.tasks.prep.crappify import _hr_bytes, hr_crop
from pixelmill.tasks.prep.degrade import Downscale, ModCrop
from pixelmill.tasks.prep.recipes import Recipe, apply_recipe, get_recipe
from pixelmill.tasks.training.config import GanConfig, TrainConfig
from pixelmill.tasks.training.datasets import PairDataset, load_pairs
from pixelmill.tasks.training.evaluate import evaluate_pairs
from pixelmill.tasks.training.loop import train_model
from pixelmill.tasks.training.objectives import build_objective
from tests.helpers import crappify_local, ingest_local, make_image, texture_png
from tests.tasks.training.test_train import TINY, one_torch_thread  # noqa: F401 (an autouse fixture)

NEW_COLUMNS = ["hr_kind", "hr_sha256", "hr_crop", "hr_bytes", "hr_version"]


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def rotated_jpeg(seed: int) -> bytes:
    """A JPEG stored sideways with EXIF orientation 6: a person (and crappify) sees it turned upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(make_image(71, 45, seed=seed), "JPEG", quality=90, exif=exif)


def sources(folder) -> None:
    """Odd sizes (modcrop has something to crop) in the kinds of file crappify decodes differently."""
    for i in range(5):
        storage.write_bytes(str(folder / f"t{i}.png"), texture_png(i, size=67))
    storage.write_bytes(str(folder / "rot.jpg"), rotated_jpeg(1))
    storage.write_bytes(str(folder / "gray.png"), encoded(make_image(69, 51, seed=2).convert("L"), "PNG"))
    pal = make_image(65, 49, seed=3).convert("P", palette=Image.Palette.ADAPTIVE)
    storage.write_bytes(str(folder / "pal.png"), encoded(pal, "PNG", transparency=0))
    storage.write_bytes(str(folder / "wide.jpg"), encoded(make_image(83, 57, seed=4), "JPEG", quality=85))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    src, ws = root / "src", str(root / "ws")
    sources(src)
    ingest_local(str(src), ws, split_fractions=(1.0, 0.0, 0.0))
    for recipe in ("lesson7", "sr-x2"):
        crappify_local(ws, recipe=recipe)
    return ws


def pairs(ws, name):
    return sorted(Catalog(ws).read("pairs", name).to_pylist(), key=lambda r: r["pair_id"])


def old_hr_bytes(row) -> bytes:
    """The HR file crappify wrote for this pair before references: the same recipe, seed and source."""
    data = storage.read_bytes(row["image_uri"])
    src, facts = open_image(data)
    recipe = get_recipe(row["recipe"])
    result = apply_recipe(recipe, normalize_mode(src), row["seed"], encode_hr=False)
    assert result.lr_bytes == storage.read_bytes(row["lr_uri"])  # the same pair: the LR files agree
    return _hr_bytes(data, facts, recipe, result.hr)


def old_style_set(ws, name: str, new_name: str) -> list[dict]:
    """The set as crappify made it before references: every HR a written PNG, and a catalog part written
    without the new columns (a table from an older version)."""
    old = []
    for r in pairs(ws, name):
        hr_uri = storage.join(ws, "datasets", new_name, r["split"], "hr", f"{r['pair_id']}.png")
        storage.write_bytes(hr_uri, old_hr_bytes(r))
        old.append({k: v for k, v in r.items() if k not in NEW_COLUMNS} | {"hr_uri": hr_uri, "set_name": new_name})
    part = storage.resolve(Catalog(ws).write_part("pairs", new_name, "old", old))[1]
    pq.write_table(pq.read_table(part).drop_columns(NEW_COLUMNS), part)
    assert not set(NEW_COLUMNS) & set(pq.read_schema(part).names)
    return old


def hr_files(ws, name) -> list[str]:
    root = os.path.join(storage.resolve(ws)[1], "datasets", name)
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if "/hr" in d]


def test_lesson7_stores_no_hr_and_reads_what_the_copies_held(ws):
    rows = pairs(ws, "d-lesson7")
    assert len(rows) == 9 and {r["status"] for r in rows} == {"ok"}
    assert all(r["hr_kind"] == "source" and r["hr_uri"] == r["image_uri"] and r["hr_crop"] is None for r in rows)
    assert hr_files(ws, "d-lesson7") == []  # no HR copies: only the LR inputs are written
    old_style_set(ws, "d-lesson7", "old-lesson7")

    new, skipped = load_pairs(Catalog(ws), "d-lesson7", "train")
    old, old_skipped = load_pairs(Catalog(ws), "old-lesson7", "train")  # a table without the new columns
    assert skipped == old_skipped == 0 and [r.pair_id for r in new] == [r.pair_id for r in old]
    assert all(r.hr_ref.kind == "copy" and r.hr is not None and r.hr.sha256 is None for r in old)
    for kw in ({"crop": None, "train": False}, {"crop": 16, "train": True, "seed": 3}):
        a, b = PairDataset(new, 1, **kw), PairDataset(old, 1, **kw)
        for i in range(2 * len(new)):  # two epochs of draws in train mode
            (xa, ya), (xb, yb) = a[i], b[i]
            assert torch.equal(xa, xb) and torch.equal(ya, yb), (kw, i)

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 3, padding=1)
    scored = [evaluate_pairs(model, recs, 1, 3, torch.device("cpu"), keep_images=1) for recs in (new, old)]
    assert scored[0][0] == scored[1][0]  # the same scores for every pair
    assert all(np.array_equal(p, q) for p, q in zip(scored[0][1][0], scored[1][1][0], strict=True))


def test_training_on_references_matches_training_on_copies(ws):
    if not Catalog(ws).read("pairs", "old-lesson7").num_rows:
        old_style_set(ws, "d-lesson7", "old-lesson7")
    cfg = TrainConfig(**TINY, steps=3, val_every=3)
    results = [train_model(build_objective(cfg, ws, name), cfg) for name in ("d-lesson7", "old-lesson7")]
    for a, b in zip(results[0].model.state_dict().values(), results[1].model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    timeless = [[{k: v for k, v in h.items() if k != "elapsed_s"} for h in r.history] for r in results]
    assert timeless[0] == timeless[1] and "val_psnr_y" in timeless[0][-1]


def test_sr_x2_modcrop_is_a_recorded_crop_equal_to_the_old_hr(ws):
    rows = pairs(ws, "d-sr-x2")
    assert len(rows) == 9 and hr_files(ws, "d-sr-x2") == []
    cropped = 0
    for r in rows:
        old = np.asarray(Image.open(io.BytesIO(old_hr_bytes(r))).convert("RGB"))
        hr = np.asarray(load_hr(HrRef.of(r)))
        assert hr.shape == old.shape == (r["hr_height"], r["hr_width"], 3) and np.array_equal(hr, old), r["image_uri"]
        assert r["hr_kind"] == "source" and r["hr_sha256"] == r["image_sha256"]
        if r["hr_crop"]:
            assert r["hr_crop"] == [0, 0, r["hr_width"], r["hr_height"]]
            cropped += 1
    assert cropped == 9  # every source has an odd side here, the rotated JPEG's turned ones too


def test_a_recipe_that_resizes_the_target_still_writes_it(tmp_path):
    resize = Recipe(name="half-target", target=(Downscale(factor=2),), steps=(Downscale(factor=2),))
    facts = ImageFacts(67, 67, "PNG", "RGB")
    hr = Image.new("RGB", (33, 33))
    assert hr_crop(resize, facts, hr) is False
    assert hr_crop(get_recipe("sr-x4"), facts, Image.new("RGB", (64, 64))) == [0, 0, 64, 64]
    assert hr_crop(get_recipe("dejpeg"), facts, Image.new("RGB", (67, 67))) is None
    assert hr_crop(Recipe(name="m", target=(ModCrop(scale=2), ModCrop(scale=3))), facts,
                   Image.new("RGB", (66, 66))) == [0, 0, 66, 66]
    assert hr_crop(get_recipe("lesson7"), ImageFacts(67, 67, "HEIF", "RGB"), Image.new("RGB", (67, 67))) is False

    src, ws = tmp_path / "src", str(tmp_path / "ws")
    sources(src)
    ingest_local(str(src), ws)
    recipe_file = tmp_path / "half-target.yaml"
    recipe_file.write_text("target:\n  - {op: downscale, factor: 2}\nsteps:\n  - {op: downscale, factor: 2}\n")
    rows = crappify_local(ws, recipe=str(recipe_file))
    assert len(rows) == 9 and {(r["status"], r["hr_kind"]) for r in rows} == {("ok", "copy")}
    assert len(hr_files(ws, "d-half-target")) == 9
    for r in rows:
        data = storage.read_bytes(r["hr_uri"])
        assert r["hr_uri"].startswith(storage.join(ws, "datasets")) and r["hr_sha256"] == hashlib.sha256(data).hexdigest()
        assert np.array_equal(np.asarray(load_hr(HrRef.of(r))), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def make_set(tmp_path, recipe="sr-x2"):
    src, ws = tmp_path / "src", str(tmp_path / "ws")
    sources(src)
    ingest_local(str(src), ws, split_fractions=(1.0, 0.0, 0.0))
    crappify_local(ws, recipe=recipe)
    return src, ws


def test_a_source_edited_after_crappify_is_reported_and_never_used(tmp_path, caplog):
    src, ws = make_set(tmp_path)
    before = {r.pair_id: r for r in load_pairs(Catalog(ws), "d-sr-x2", "train")[0]}
    edited = src / "t1.png"
    edited.write_bytes(texture_png(99, size=67))  # other pixels, other size
    with caplog.at_level(logging.WARNING, logger="pixelmill.training"):
        records, skipped = load_pairs(Catalog(ws), "d-sr-x2", "train")
    assert skipped == 1 and len(records) == 8
    gone = next(pid for pid, r in before.items() if r.hr_uri.endswith("/t1.png"))
    assert gone not in {r.pair_id for r in records}
    assert f"{gone} (changed: {before[gone].hr_uri})" in caplog.text and "1 pair(s) left out" in caplog.text
    with pytest.raises(SourceChanged, match="t1.png changed since the pair was made"):
        load_hr(before[gone].hr_ref)

    # an edit that keeps the size and the modification time passes the cheap check, and is caught at the read
    quiet = src / "t2.png"
    data, stat = bytearray(quiet.read_bytes()), quiet.stat()
    data[-20] ^= 0xFF  # inside the IEND region's padding: same length
    quiet.write_bytes(bytes(data))
    os.utime(quiet, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    pid = next(p for p, r in before.items() if r.hr_uri.endswith("/t2.png"))
    assert check_sources([(pid, before[pid].hr_ref)]) == {}  # stat unchanged: not read
    data_set = PairDataset([before[pid]], 2, crop=None, train=False)
    with pytest.raises(SourceChanged, match="t2.png changed"):
        data_set[0]


def test_a_vanished_source_is_reported_and_a_split_without_sources_fails(tmp_path, caplog):
    src, ws = make_set(tmp_path, "lesson7")
    os.remove(src / "rot.jpg")
    with caplog.at_level(logging.WARNING, logger="pixelmill.training"):
        records, skipped = load_pairs(Catalog(ws), "d-lesson7", "train")
    assert skipped == 1 and len(records) == 8 and "(vanished: " in caplog.text and "rot.jpg" in caplog.text
    for f in src.iterdir():
        f.unlink()
    with pytest.raises(PixelmillError, match="9 pair\\(s\\) left out.*vanished"):
        load_pairs(Catalog(ws), "d-lesson7", "train")


def test_a_source_changed_between_ingest_and_crappify_is_an_error_row(tmp_path):
    src, ws = tmp_path / "src", str(tmp_path / "ws")
    sources(src)
    t1 = (src / "t1.png").read_bytes()
    (src / "t1.png").write_bytes(t1 + b"AAAA")  # after IEND: decoders ignore it
    ingest_local(str(src), ws)
    other = texture_png(42, size=67)
    assert len(other) != (src / "t0.png").stat().st_size
    (src / "t0.png").write_bytes(other)
    (src / "t1.png").write_bytes(t1 + b"BBBB")  # the same size, other bytes
    rows = {r["image_uri"].rsplit("/", 1)[1]: r for r in crappify_local(ws, recipe="lesson7")}
    assert rows["t0.png"]["status"] == "error" and rows["t0.png"]["error"].startswith("source_changed: ")
    assert rows["t0.png"]["hr_uri"] is None and rows["t0.png"]["lr_uri"] is None
    assert all(r["status"] == "ok" for name, r in rows.items() if name != "t0.png")
    # a change that kept the size is not hashed by crappify, but no reader uses the pair: its sha256 is the catalog's
    assert rows["t1.png"]["hr_sha256"] == rows["t1.png"]["image_sha256"]
    assert check_sources([("t1", HrRef.of(rows["t1.png"]))]) == {"t1": "changed"}


def test_the_gan_stage_reads_referenced_pairs(ws):
    cfg = TrainConfig(**TINY, steps=2, val_every=2)
    base = build_objective(cfg, ws, "d-sr-x2")
    assert all(r.hr_ref.is_source for r in base.train_records)
    ref = registry.save(ws, "refs-gan-base", train_model(base, cfg).model, config=base.registry_config(),
                        metadata={}).ref
    gan = TrainConfig(**TINY, steps=2, val_every=2,
                      gan=GanConfig(init_from=ref, critic_base=8, critic_layers=2, critic_threshold=10.0))
    objective = build_objective(gan, ws, "d-sr-x2")
    train, _ = objective.datasets(None)
    x, y = train[0]
    assert x.shape == (3, 16, 16) and y.shape == (3, 32, 32)
    result = train_model(objective, gan)
    assert result.step == 2 and objective.critic_optimizer.state
