"""Bulk apply without Prefect: outputs, rows, reruns, a kill mid-shard, bad inputs, hostile names, S3."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelmill.models.factory import build_model
from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.classes import ClassMap
from pixelmill.tasks.inference.apply import ApplyConfig, apply_local
from pixelmill.tasks.inference.runtime import auto_batch, model_overlap, stride_grid
from tests.helpers import ingest_local, noise_png

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[3]


def register_tiny(workspace: str, name: str = "tiny", scale: int = 1, task: str = "restoration",
                  base: int = 8) -> str:
    """A small random U-Net in the registry; returns its reference."""
    torch.manual_seed(0)
    if task == "segmentation":
        classes = ClassMap(names=("sky", "road", "car"))
        model = build_model({"arch": "unet-plain", "out_channels": 3, "base": base, "depth": 2})
        config = {"task": task, "scale": 1, "in_channels": 3, "num_classes": 3, "majority_class": 0,
                  "classes": classes.model_dump(mode="json")}
    else:
        model = build_model({"arch": "unet-plain", "scale": scale, "base": base, "depth": 2, "residual": True})
        config = {"task": task, "scale": scale, "in_channels": 3, "input_range": [0, 1]}
    return registry.save(workspace, name, model, config, {"pairs_set": "test"}).ref


def write_images(folder: Path, sizes: list[tuple[int, int]], prefix: str = "img") -> list[Path]:
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"{prefix}{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(noise_png(w, h, seed=i))
        paths.append(path)
    return paths


def outputs_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def rows(workspace: str, model: str = "tiny") -> list[dict]:
    return Catalog(workspace).read("predictions", model).to_pylist()


def test_restoration_writes_mirrored_outputs_and_a_rerun_skips_them(tmp_path):
    ws = str(tmp_path / "ws")
    ref = register_tiny(ws, scale=2)
    write_images(tmp_path / "in" / "2019", [(40, 30), (33, 47)])
    write_images(tmp_path / "in", [(64, 64)], prefix="top")
    cfg = ApplyConfig(tile=32, overlap=8, shard_size=2, format="jpeg")
    plan = apply_local(ws, ref, str(tmp_path / "in"), str(tmp_path / "out"), cfg, run_id="r1")
    assert plan.todo == 3 and plan.skipped == 0 and len(plan.shards) == 2
    got = rows(ws)
    assert len(got) == 3 and {r["status"] for r in got} == {"ok"}
    for r in got:
        path = Path(r["output_uri"].removeprefix("file://"))
        assert path.is_relative_to(tmp_path / "out") and path.suffix == ".jpg"
        with Image.open(path) as im:
            assert im.size == (2 * r["input_width"], 2 * r["input_height"]) == (r["output_width"], r["output_height"])
        assert r["model_version"] == "v1" and r["run_id"] == "r1" and r["tiles"] >= 1
    assert sorted(p.parent.name for p in outputs_under(tmp_path / "out")) == ["2019", "2019", "out"]
    mtimes = {p: p.stat().st_mtime_ns for p in outputs_under(tmp_path / "out")}

    again = apply_local(ws, ref, str(tmp_path / "in"), str(tmp_path / "out"), cfg, run_id="r2")
    assert again.todo == 0 and again.skipped == 3
    assert {r["run_id"] for r in rows(ws)} == {"r1"}
    assert {p: p.stat().st_mtime_ns for p in outputs_under(tmp_path / "out")} == mtimes

    forced = apply_local(ws, ref, str(tmp_path / "in"), str(tmp_path / "out"), cfg.model_copy(update={"force": True}),
                         run_id="r3")
    assert forced.todo == 3 and len(rows(ws)) == 3 and {r["run_id"] for r in rows(ws)} == {"r3"}


def test_a_changed_input_and_a_new_model_version_are_done_again(tmp_path):
    ws = str(tmp_path / "ws")
    ref = register_tiny(ws)
    [first, _] = write_images(tmp_path / "in", [(20, 20), (24, 24)])
    cfg = ApplyConfig(tile=64, overlap=8)
    apply_local(ws, ref, str(tmp_path / "in"), str(tmp_path / "out"), cfg)
    first.write_bytes(noise_png(28, 28, seed=99))
    os.utime(first, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert apply_local(ws, ref, str(tmp_path / "in"), str(tmp_path / "out"), cfg).todo == 1
    assert sorted(r["input_width"] for r in rows(ws)) == [24, 28]  # one row per input: the newest
    register_tiny(ws)  # v2
    assert apply_local(ws, "tiny", str(tmp_path / "in"), str(tmp_path / "out"), cfg).todo == 2


@pytest.mark.slow  # measured 53 s on 2 shared, loaded cores
def test_bad_inputs_of_the_ingest_corpus_are_error_rows(tmp_path, sample_folder):
    folder, expected = sample_folder
    ws = str(tmp_path / "ws")
    ref = register_tiny(ws)
    plan = apply_local(ws, ref, str(folder), str(tmp_path / "out"), ApplyConfig(tile=256, overlap=16))
    assert plan.other_files == 1  # README.txt
    by_name = {r["input_uri"].rsplit(str(folder) + "/", 1)[1]: r for r in rows(ws)}
    assert sorted(by_name) == sorted(e.name for e in expected)
    for e in expected:
        r = by_name[e.name]
        if e.error_kind:
            assert r["status"] == "error" and r["error"].startswith(e.error_kind + ":"), (e.name, r["error"])
            assert r["output_uri"] is None
        else:
            assert r["status"] == "ok", (e.name, r["error"])
            assert (r["output_width"], r["output_height"]) == (e.width, e.height)
    assert len(outputs_under(tmp_path / "out")) == sum(1 for e in expected if not e.error_kind)
    # a rerun does not read the bad files again: their content has not changed
    assert apply_local(ws, ref, str(folder), str(tmp_path / "out"), ApplyConfig(tile=256, overlap=16)).todo == 0


def test_hostile_archive_names_never_write_outside_the_output(tmp_path):
    ws = str(tmp_path / "ws")
    ref = register_tiny(ws)
    same = noise_png(16, 16, seed=5)
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../../evil.png", noise_png(16, 16, seed=1))
        z.writestr("/etc/evil.png", noise_png(16, 16, seed=2))
        z.writestr("a/b.png", same)  # these two clean to the same folder and name, with the same bytes
        z.writestr("a\\b.png", same)
        z.writestr("ok.png", noise_png(16, 16, seed=3))
    out = tmp_path / "deep" / "out"
    apply_local(ws, ref, str(archive), str(out), ApplyConfig(tile=64, overlap=8))
    got = {r["input_uri"].split("::")[0].removeprefix("zip://"): r for r in rows(ws)}
    assert len(got) == 5
    for name in ("../../evil.png", "/etc/evil.png"):
        assert got[name]["status"] == "error" and got[name]["error"].startswith("unsafe_name:")
    ok = [r for r in got.values() if r["status"] == "ok"]
    assert len(ok) == 3 and len({r["output_uri"] for r in ok}) == 3  # the colliding pair kept apart
    written = outputs_under(tmp_path)
    assert all(p.is_relative_to(out) or p.is_relative_to(tmp_path / "ws") or p == archive for p in written)
    assert len(outputs_under(out)) == 3 and not list(Path("/etc").glob("evil*"))
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "deep" / "evil.png").exists()


def test_dataset_input_uses_the_ok_rows_of_the_images_table(tmp_path):
    ws = str(tmp_path / "ws")
    ref = register_tiny(ws)
    write_images(tmp_path / "in" / "sub", [(20, 20), (24, 24)])
    (tmp_path / "in" / "sub" / "bad.png").write_bytes(b"not a png")
    ingest_local(str(tmp_path / "in"), ws, dataset="photos")
    plan = apply_local(ws, ref, "dataset:photos", str(tmp_path / "out"), ApplyConfig(tile=64, overlap=8))
    assert plan.todo == 2 and {r["status"] for r in rows(ws)} == {"ok"}
    assert sorted(p.relative_to(tmp_path / "out").parent.name for p in outputs_under(tmp_path / "out")) == ["", ""]
    assert apply_local(ws, ref, "dataset:photos", str(tmp_path / "out"), ApplyConfig()).skipped == 2


def test_segmentation_writes_class_index_masks_and_overlays(tmp_path):
    ws = str(tmp_path / "ws")
    ref = register_tiny(ws, name="seg", task="segmentation")
    write_images(tmp_path / "in", [(50, 40), (100, 70)])
    apply_local(ws, ref, str(tmp_path / "in"), str(tmp_path / "out"), ApplyConfig(tile=48, overlap=8, overlay=True))
    got = rows(ws, "seg")
    assert len(got) == 2 and all(r["status"] == "ok" and r["task"] == "segmentation" for r in got)
    for r in got:
        with Image.open(io.BytesIO(storage.read_bytes(r["output_uri"]))) as mask:
            assert mask.mode == "P" and mask.size == (r["input_width"], r["input_height"])
            assert np.asarray(mask).max() < 3
        with Image.open(io.BytesIO(storage.read_bytes(r["overlay_uri"]))) as over:
            assert over.mode == "RGB" and over.size == mask.size


def card_of(**arch_kwargs) -> ModelCard:
    return ModelCard(name="m", version="v1", uri="memory://m/v1", task="restoration", arch="unet-plain",
                     arch_kwargs=arch_kwargs, scale=arch_kwargs.get("scale", 1))


def test_auto_batch_fits_the_memory_budget():
    config = card_of(base=32, scale=2)
    tile, batch = auto_batch(ApplyConfig(max_memory=32 * 2**30), config, gpu=True)
    small_tile, small_batch = auto_batch(ApplyConfig(max_memory=700 * 2**20), config, gpu=True)
    assert tile == 512 and batch > small_batch == 1 and small_tile < tile
    assert auto_batch(ApplyConfig(batch_size=3), config)[1] == 3
    assert auto_batch(ApplyConfig(tile=1024, max_memory=32 * 2**30), config)[0] == 1024  # asked for: kept


def test_the_cpu_tile_follows_the_models_width():
    def cpu_tile(base: int) -> int:
        return auto_batch(ApplyConfig(max_memory=32 * 2**30), card_of(base=base, scale=2))[0]

    assert cpu_tile(8) == 512 and cpu_tile(16) == 384 and cpu_tile(32) == 256 and cpu_tile(64) == 192
    assert cpu_tile(1024) == 128  # never below
    assert auto_batch(ApplyConfig(overlap=200), card_of(base=64))[0] > 2 * 200  # room for the overlap


def test_a_half_size_net_gets_the_overlap_at_its_own_resolution():
    """The tiles share overlap / input_scale pixels, so a net that works at half size sees as much context at
    a seam as a full-size one, up to half a tile."""
    cfg = ApplyConfig(overlap=32)
    assert model_overlap(cfg, card_of(base=8)) == 32
    assert model_overlap(cfg, card_of(base=8, input_scale=0.5)) == 64
    assert model_overlap(ApplyConfig(overlap=5), card_of(base=8, input_scale=0.3)) == 17  # rounded up
    assert model_overlap(cfg, card_of(base=8, input_scale=0.25), tile=300) == 128
    assert model_overlap(cfg, card_of(base=8, input_scale=0.125), tile=300) == 150  # at most half the tile
    assert model_overlap(ApplyConfig(overlap=180), card_of(base=8), tile=200) == 180  # what was asked for
    assert auto_batch(ApplyConfig(overlap=200), card_of(base=64, input_scale=0.5))[0] > 2 * 400


def test_tiles_start_on_the_networks_stride_in_input_pixels():
    from pixelmill.models.factory import build_model

    def grid(**arch_kwargs) -> int:
        card = card_of(**arch_kwargs)
        return stride_grid(build_model({"arch": card.arch, **arch_kwargs}), card)

    assert grid(base=8, depth=3) == 8 and grid(base=8, depth=2, input_scale=0.5) == 8
    assert grid(base=8, depth=3, input_scale=0.25) == 32
    assert stride_grid(torch.nn.Identity(), card_of()) == 1  # an imported net that does not say


KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from pixelmill.tasks.inference.apply import ApplyConfig, apply_local
apply_local(sys.argv[1], "tiny", sys.argv[2], sys.argv[3], ApplyConfig(tile=64, overlap=8, shard_size=4, io_threads=1))
"""


@pytest.mark.slow  # measured 14 s on 2 shared, loaded cores
def test_a_run_killed_mid_shard_is_finished_by_the_next_with_no_duplicates(tmp_path):
    ws = str(tmp_path / "ws")
    register_tiny(ws, base=24)
    write_images(tmp_path / "in", [(96, 96)] * 12)
    out = tmp_path / "out"
    # Killed (a fault point, tasks/core/faults.py) as the 2nd shard is about to be recorded: the first shard is
    # recorded, the second's 4 outputs are on storage and no row names them.
    env = os.environ | {"PIXELMILL_FAULT": "shard.commit:2"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, ws, str(tmp_path / "in"), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    before = rows(ws)
    assert len(before) == 4 and len(list(out.rglob("*.png"))) == 8  # only whole shards were recorded

    apply_local(ws, "tiny", str(tmp_path / "in"), str(out), ApplyConfig(tile=64, overlap=8, shard_size=4))
    after = rows(ws)
    assert len(after) == 12 and len({r["input_uri"] for r in after}) == 12
    assert all(r["status"] == "ok" for r in after)
    parts = Catalog(ws).read_parts("predictions", "tiny")
    assert sum(t.num_rows for _, t in parts) == 12  # no duplicate rows on storage either
    finals = sorted(out.rglob("*.png"))
    assert [Path(r["output_uri"].removeprefix("file://")) for r in sorted(after, key=lambda r: r["output_uri"])] \
        == finals
    for path in finals:
        with Image.open(path) as im:
            im.load()  # whole files only: a truncated PNG fails here


@pytest.mark.s3
def test_s3_input_and_output(tmp_path, s3_bucket):
    ws = f"s3://{s3_bucket}/workspace"
    ref = register_tiny(ws, scale=2)
    for i in range(3):
        storage.write_bytes(f"s3://{s3_bucket}/incoming/day1/p{i}.png", noise_png(30 + i, 20, seed=i))
    storage.write_bytes(f"s3://{s3_bucket}/incoming/notes.txt", b"x")
    cfg = ApplyConfig(tile=64, overlap=8, format="webp", quality=80)
    plan = apply_local(ws, ref, f"s3://{s3_bucket}/incoming", f"s3://{s3_bucket}/outgoing", cfg)
    assert plan.todo == 3 and plan.other_files == 1
    got = rows(ws)
    assert len(got) == 3 and all(r["status"] == "ok" for r in got)
    for r in got:
        assert r["output_uri"].startswith(f"s3://{s3_bucket}/outgoing/day1/") and r["output_uri"].endswith(".webp")
        with Image.open(io.BytesIO(storage.read_bytes(r["output_uri"]))) as im:
            assert im.format == "WEBP" and im.size == (2 * r["input_width"], 40)
    assert apply_local(ws, ref, f"s3://{s3_bucket}/incoming", f"s3://{s3_bucket}/outgoing", cfg).skipped == 3
