"""Fixtures of the fault suite: the session's Prefect server, one generated photo folder for the whole package, and
the uninterrupted runs every faulty run is compared with."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.driver import COUNTS, PrefectServer, run_cli
from tests.helpers import make_image, noise_png

INGEST_SHARD = "16"
CRAPPIFY_SHARD = "12"


@dataclass(frozen=True)
class Photos:
    folder: Path
    image_files: int  # files with an image extension: one catalog row each
    pairs: int  # ok images that are not duplicates: one pair each


@pytest.fixture(scope="package")
def prefect(prefect_api) -> PrefectServer:
    """The session's Prefect server (tests/conftest.py), shared with the other subprocess tests."""
    return prefect_api


@pytest.fixture(scope="package")
def photos(tmp_path_factory) -> Photos:
    """Photo-like JPEGs and PNGs of assorted sizes, noise PNGs, broken files, a non-image file, and three copies
    of other files under names that sort into other shards: one that runs at the same time as its original's,
    two that run last."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(200):
        img = make_image(w=112 + (i * 7) % 96, h=96 + (i * 5) % 64, seed=i)
        if i % 2:
            img.save(folder / f"photo{i:03d}.jpg", quality=90)
        else:
            img.save(folder / f"photo{i:03d}.png")
    for i in range(40):
        (folder / f"noise{i:02d}.png").write_bytes(noise_png(64 + i, 48 + i % 17, seed=1000 + i))
    for original, copy in (("noise03.png", "noise20-copy.png"), ("photo005.jpg", "zz-copy0.jpg"),
                           ("photo120.png", "zz-copy1.png")):
        shutil.copy(folder / original, folder / copy)
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes((folder / "photo001.jpg").read_bytes()[:600])
    (folder / "not-an-image.png").write_text("just text")
    (folder / "notes.txt").write_text("not cataloged: not an image extension")
    return Photos(folder, image_files=246, pairs=240)


@pytest.fixture(scope="package")
def baseline(prefect, photos, tmp_path_factory) -> Path:
    """A workspace made by uninterrupted runs: `ingest` into data set `d`, then `crappify` (lesson7)."""
    ws = tmp_path_factory.mktemp("baseline") / "ws"
    for args in (ingest_args(photos, ws), crappify_args(ws)):
        code, out = run_cli(args, prefect.env(), ws.parent / f"{args[0]}.log")
        assert code == 0, out[-3000:]
    return ws


def ingest_args(photos: Photos, ws: Path) -> list[str]:
    return ["ingest", str(photos.folder), "--dataset", "d", "--workspace", str(ws), "--shard-size", INGEST_SHARD]


def crappify_args(ws: Path, *more: str) -> list[str]:
    return ["crappify", "--dataset", "d", "--recipe", "lesson7", "--workspace", str(ws), "--shard-size",
            CRAPPIFY_SHARD, *more]


def pytest_terminal_summary(terminalreporter):
    if COUNTS:
        terminalreporter.section("fault suite counts")
        for test, counts in COUNTS.items():
            terminalreporter.write_line(f"{test}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
