"""kill -9 of the whole `pixelmill` process group at three random points of a run, then a rerun: storage ends up
as an uninterrupted run leaves it (0 duplicates, 0 missing rows, 0 orphan or temporary files, the same bytes), and
every killed run, left `Running` by its death, is marked `Crashed` by the run after it."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import crappify_args, ingest_args
from tests.faults.driver import (
    IMAGE_FIELDS,
    PAIR_FIELDS,
    PREDICTION_FIELDS,
    Cli,
    audit_images,
    audit_pairs,
    audit_predictions,
    committed_rows,
    flow_run_of,
    leases,
    local,
    record,
    rows_by_key,
    run_cli,
    tree,
)
from tests.helpers import noise_png

pytestmark = pytest.mark.slow  # measured on 2 busy cores: ingest 12-20 s, crappify 30-35 s, apply 90-120 s
# Kill points are fractions of the run's rows committed: seeded, so a failure can be replayed
# (PIXELMILL_FAULT_SEED=... pytest tests/faults).
SEED = int(os.environ.get("PIXELMILL_FAULT_SEED", "20250607"))


def kill_points(stage: str) -> list[float]:
    """Three fractions of the rows, in order; the last leaves a few waves of shards for the last kill to hit."""
    rng = random.Random(f"{SEED}-{stage}")
    return sorted(rng.uniform(0.05, 0.6) for _ in range(3))


def flow_run_state(prefect, run_id: str) -> dict:
    return httpx.get(f"{prefect.url}/flow_runs/{run_id}", timeout=10).json()["state"]


def kill_once(prefect, args: list[str], ws: Path, stage: str, group: str, total: int, table: str, mid_shard,
              point: float, log: Path) -> str:
    """Start the command and kill its group once it holds its lease (so it is past start-up and planning),
    `point` of `total` rows are committed and `mid_shard(done, before, started)` holds: `before` is what earlier
    runs committed, `started` the wall time this run began. Returns the killed flow run's id."""
    started = time.time()
    cli = Cli(args, prefect.env(), log)
    before = committed_rows(ws, table, group)
    seen: dict[str, str] = {}

    def ready() -> bool:
        run_id = seen.get("run") or flow_run_of(ws, stage, group, cli.proc.pid)  # its lease: it is Running
        if run_id:
            seen["run"] = run_id
        done = committed_rows(ws, table, group)
        return bool(run_id) and done >= point * total and mid_shard(done, before, started)

    assert cli.kill_when(ready), f"{stage} ended before kill point {point:.2f}: {log.read_text()[-2000:]}"
    state = flow_run_state(prefect, seen["run"])
    assert state["type"] == "RUNNING", state  # what a kill -9 leaves behind until someone says otherwise
    return seen["run"]


def kill_three_times(prefect, args: list[str], ws: Path, stage: str, group: str, total: int, table: str,
                     mid_shard, logs: Path) -> list[str]:
    return [kill_once(prefect, args, ws, stage, group, total, table, mid_shard, point,
                      logs / f"{stage}-killed-{i}.log") for i, point in enumerate(kill_points(stage))]


def assert_marked_crashed(prefect, killed: list[str], stage: str, group: str) -> None:
    for run_id in killed:
        state = flow_run_state(prefect, run_id)
        assert state["type"] == "CRASHED", (run_id, state)
        assert state["message"].startswith(f"marked Crashed by a later {stage} run of {group} ("), state
        assert state["message"].endswith(" is gone"), state


def test_ingest_killed_three_times_then_rerun_is_the_uninterrupted_run(prefect, photos, baseline, tmp_path):
    ws = tmp_path / "ws"
    args = ingest_args(photos, ws)
    # Shards run four at a time: when one has just committed, the others are half done.
    killed = kill_three_times(prefect, args, ws, "ingest", "d", photos.image_files, "images",
                              mid_shard=lambda done, before, started: done > before, logs=tmp_path)

    code, out = run_cli(args, prefect.env(), tmp_path / "rerun.log")
    assert code == 0, out[-3000:]
    expected = {f"file://{p}" for p in photos.folder.iterdir() if p.suffix != ".txt"}
    counts = audit_images(ws, "d", expected)
    assert counts.pop("rows_checked") == photos.image_files
    assert counts == {"duplicates_on_storage": 0, "duplicates_read": 0, "missing": 0, "unexpected": 0,
                      "temp_files": 0}
    assert rows_by_key(ws, "images", "d", IMAGE_FIELDS) == rows_by_key(baseline, "images", "d", IMAGE_FIELDS)
    assert_marked_crashed(prefect, killed, "ingest", "d")
    assert leases(ws, "ingest", "d") == []
    record("ingest kill -9", runs_killed=len(killed), rows_checked=photos.image_files,
           duplicates_found=0, missing=0, orphans=0)


def test_crappify_killed_three_times_then_rerun_makes_the_same_bytes(prefect, photos, baseline, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(baseline / "catalog" / "images", ws / "catalog" / "images")  # the same ingested data set
    args = crappify_args(ws)
    hr_files = lambda: sum(1 for _ in (ws / "datasets" / "d-lesson7").glob("*/hr/*.png"))  # noqa: E731
    # Mid-shard: pairs on disk that no committed row names yet (each kill waits for one).
    killed = kill_three_times(prefect, args, ws, "crappify", "d-lesson7", photos.pairs, "pairs",
                              mid_shard=lambda done, before, started: done > before and hr_files() > done,
                              logs=tmp_path)

    code, out = run_cli(args, prefect.env(), tmp_path / "rerun.log")
    assert code == 0, out[-3000:]
    counts = audit_pairs(ws, "d-lesson7", photos.pairs)
    rows = counts.pop("rows_checked")
    assert counts == {"duplicates_on_storage": 0, "duplicates_read": 0, "missing": 0, "error_rows": 0,
                      "orphans": 0, "shared_files": 0, "files_missing": 0, "temp_files": 0}
    assert rows == photos.pairs
    assert rows_by_key(ws, "pairs", "d-lesson7", PAIR_FIELDS) == \
        rows_by_key(baseline, "pairs", "d-lesson7", PAIR_FIELDS)
    files = tree(local(ws) / "datasets" / "d-lesson7")
    assert len(files) == 2 * photos.pairs
    assert files == tree(local(baseline) / "datasets" / "d-lesson7")  # names and bytes
    assert_marked_crashed(prefect, killed, "crappify", "d-lesson7")
    assert leases(ws, "crappify", "d-lesson7") == []
    record("crappify kill -9", runs_killed=len(killed), rows_checked=rows, files_compared=len(files),
           duplicates_found=0, missing=0, orphans=0)


APPLY_INPUTS = 24


@pytest.fixture
def apply_input(photos, tmp_path) -> Path:
    """Twenty-four images of 2-4 tiles and a broken file (an error row). Large enough that a shard's outputs
    land over a few hundred ms: on 64 px images a whole shard took ~40 ms and the kill could miss it."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(APPLY_INPUTS):
        (folder / f"noise{i:02d}.png").write_bytes(noise_png(280 + 9 * i, 200 + 5 * i, seed=2000 + i))
    shutil.copy(photos.folder / "truncated.jpg", folder / "truncated.jpg")
    return folder


def fresh_files(folder: Path, since: float) -> int:
    """Files under `folder` written at or after `since` (one may be replaced while we look)."""
    count = 0
    for path in folder.rglob("*") if folder.exists() else ():
        with contextlib.suppress(FileNotFoundError):
            count += path.is_file() and path.stat().st_mtime >= since
    return count


def apply_args(ws: Path, folder: Path, out: Path) -> list[str]:
    # One image per forward in shards of 8: a shard's outputs land one by one over most of its time, so a poll
    # finds one mid-shard; with whole-shard batches they land within ms of the commit and a kill can miss them.
    return ["apply", "tiny", "--input", str(folder), "--output", str(out), "--workspace", str(ws), "--tile", "256",
            "--shard-size", "8", "--batch-size", "1"]


def test_apply_killed_three_times_then_rerun_writes_the_same_outputs(prefect, apply_input, tmp_path):
    from tests.tasks.inference.test_apply import register_tiny  # torch: only this test needs it

    base_ws, base_out, ws, out = tmp_path / "base", tmp_path / "base-out", tmp_path / "ws", tmp_path / "out"
    for workspace in (base_ws, ws):
        register_tiny(str(workspace))  # seeded: the same weights in both
    code, text = run_cli(apply_args(base_ws, apply_input, base_out), prefect.env(), tmp_path / "baseline.log")
    assert code == 0, text[-3000:]

    args, total = apply_args(ws, apply_input, out), APPLY_INPUTS + 1
    # Mid-shard: outputs this run wrote that no row it committed names yet (by mtime: outputs an earlier killed
    # run left are not this run's progress).
    killed = kill_three_times(prefect, args, ws, "apply", "tiny", total, "predictions",
                              mid_shard=lambda done, before, started: fresh_files(out, started) > done - before,
                              logs=tmp_path)

    code, text = run_cli(args, prefect.env(), tmp_path / "rerun.log")
    assert code == 0, text[-3000:]
    counts = audit_predictions(ws, "tiny", out, {f"file://{p}" for p in apply_input.iterdir()})
    assert counts.pop("rows_checked") == total
    assert set(counts.values()) == {0}, counts
    strip = lambda rows: {k[-1].rsplit("/", 1)[1]: v for k, v in rows.items()}  # noqa: E731  (key: input name)
    assert strip(rows_by_key(ws, "predictions", "tiny", PREDICTION_FIELDS)) == \
        strip(rows_by_key(base_ws, "predictions", "tiny", PREDICTION_FIELDS))
    files = tree(out)
    assert len(files) == APPLY_INPUTS and files == tree(base_out)  # names and bytes
    assert_marked_crashed(prefect, killed, "apply", "tiny")
    record("apply kill -9", runs_killed=len(killed), rows_checked=total, files_compared=len(files),
           duplicates_found=0, missing=0, orphans=0)
