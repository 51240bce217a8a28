"""kill -9 of a run at three deterministic fault points (tasks/core/faults.py), then a rerun: storage ends up as an
uninterrupted run leaves it (0 duplicates, 0 missing rows, 0 orphan or temporary files, the same bytes), and every
killed run, left `Running` by its death, is marked `Crashed` by the run after it.

Each kill is armed, not timed: `PIXELMILL_FAULT=shard.commit:2` dies as the run's 2nd shard is about to be recorded,
`storage.write:5` (counting only the files under one folder) right after the 5th output landed. So each test asserts
the state that its point promises at the kill (how many outputs this run wrote, which of them no committed row names
yet) before it checks the rerun, and a loaded machine cannot make a kill land elsewhere or miss."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.metadata import provenance_of
from tests.faults.conftest import CRAPPIFY_SHARD, crappify_args, ingest_args
from tests.faults.driver import (
    IMAGE_FIELDS,
    PAIR_FIELDS,
    PREDICTION_FIELDS,
    audit_images,
    audit_pairs,
    audit_predictions,
    committed_rows,
    flow_run_of,
    leases,
    local,
    named_by_rows,
    output_tree,
    part_names,
    record,
    rows_by_key,
    run_cli,
    run_to_fault,
    snapshot,
    tree,
    written_since,
)
from tests.helpers import noise_png

pytestmark = pytest.mark.slow  # measured on 2 shared cores: ingest 8-12 s, crappify 19-29 s, apply 41-99 s


def flow_run_state(prefect, run_id: str) -> dict:
    return httpx.get(f"{prefect.url}/flow_runs/{run_id}", timeout=10).json()["state"]


def killed_run(prefect, ws: Path, stage: str, group: str, pid: int) -> str:
    """The flow run id of the killed command, from the lease it left; its state is still Running."""
    run_id = next((lease.flow_run_id for lease in leases(ws, stage, group) if lease.pid == pid), None)
    assert run_id and run_id == flow_run_of(ws, stage, group, pid), f"the killed {stage} run left no lease"
    state = flow_run_state(prefect, run_id)
    assert state["type"] == "RUNNING", state  # what a kill -9 leaves behind until someone says otherwise
    return run_id


def only_under(fault: str, folder: Path) -> str:
    """storage.write counts only the outputs under `folder` (not catalog parts, not leases)."""
    return f"{folder}/" if fault.startswith("storage.write") else ""


def assert_marked_crashed(prefect, killed: list[str], stage: str, group: str) -> None:
    for run_id in killed:
        state = flow_run_state(prefect, run_id)
        assert state["type"] == "CRASHED", (run_id, state)
        assert state["message"].startswith(f"marked Crashed by a later {stage} run of {group} ("), state
        assert state["message"].endswith(" is gone"), state


def test_ingest_killed_three_times_then_rerun_is_the_uninterrupted_run(prefect, photos, baseline, tmp_path):
    ws = tmp_path / "ws"
    args = ingest_args(photos, ws)
    killed = []
    # 246 files in shards of 16 (several in flight on threads): the 2nd commit, the 4th, then the very first.
    for i, nth in enumerate((2, 4, 1)):
        before = part_names(ws, "images", "d")
        pid = run_to_fault(args, prefect.env(), tmp_path / f"killed-{i}.log", f"shard.commit:{nth}")
        killed.append(killed_run(prefect, ws, "ingest", "d", pid))
        # Dead as its Nth shard was about to be recorded: at most the N-1 before it are (those still being written
        # by another thread may not be), and the Nth's rows are not.
        new = part_names(ws, "images", "d") - before
        assert len(new) <= nth - 1, (nth, new)
    assert committed_rows(ws, "images", "d") < photos.image_files  # the rerun has work left

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


PAIR_FILES = ("hr_uri", "lr_uri", "mask_uri")


def test_crappify_killed_three_times_then_rerun_makes_the_same_bytes(prefect, photos, baseline, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(baseline / "catalog" / "images", ws / "catalog" / "images")  # the same ingested data set
    args = crappify_args(ws)
    set_dir = local(ws) / "datasets" / "d-lesson7"
    shard_files = int(CRAPPIFY_SHARD)  # an LR file per pair: lesson7's HR target is the source, referenced
    # Pairs are made in the children of a process pool, each counting its own hits: "the 5th file" is the first
    # child's to write its 5th. The child kills its whole process group (the command, the forkserver, the other
    # children), as a lost machine would; alone it would only break the pool.
    kills = [("storage.write:5", 0), ("shard.commit:2", shard_files), ("storage.write:18", 18 - shard_files)]
    killed = []
    for i, (fault, unrecorded) in enumerate(kills):
        before, parts = snapshot(set_dir), part_names(ws, "pairs", "d-lesson7")
        pid = run_to_fault(args, prefect.env(), tmp_path / f"killed-{i}.log", fault, where=only_under(fault, set_dir),
                           group=True)
        killed.append(killed_run(prefect, ws, "crappify", "d-lesson7", pid))
        written = written_since(set_dir, before)
        new_parts = part_names(ws, "pairs", "d-lesson7") - parts
        orphans = written - named_by_rows(ws, "pairs", "d-lesson7", PAIR_FILES)
        if fault == "storage.write:5":  # inside every child's first shard: nothing recorded yet
            assert len(written) >= 5 and new_parts == set() and orphans == written, (len(written), new_parts)
        elif fault.startswith("shard.commit"):  # one child's 2nd shard written whole, its first one recorded
            assert len(written) >= 2 * shard_files and len(new_parts) >= 1 and len(orphans) >= unrecorded
        else:  # the 6th file of one child's 2nd shard: its first one recorded
            assert len(written) >= 18 and len(new_parts) >= 1 and len(orphans) >= unrecorded
    assert committed_rows(ws, "pairs", "d-lesson7") < photos.pairs

    code, out = run_cli(args, prefect.env(), tmp_path / "rerun.log")
    assert code == 0, out[-3000:]
    counts = audit_pairs(ws, "d-lesson7", photos.pairs)
    rows = counts.pop("rows_checked")
    assert counts == {"duplicates_on_storage": 0, "duplicates_read": 0, "missing": 0, "error_rows": 0,
                      "orphans": 0, "shared_files": 0, "files_missing": 0, "temp_files": 0}
    assert rows == photos.pairs
    assert rows_by_key(ws, "pairs", "d-lesson7", PAIR_FIELDS) == \
        rows_by_key(baseline, "pairs", "d-lesson7", PAIR_FIELDS)
    files = tree(set_dir)
    assert len(files) == photos.pairs  # the LR inputs; every HR target refers to its source
    assert files == tree(local(baseline) / "datasets" / "d-lesson7")  # names and bytes
    assert_marked_crashed(prefect, killed, "crappify", "d-lesson7")
    assert leases(ws, "crappify", "d-lesson7") == []
    record("crappify kill -9", runs_killed=len(killed), rows_checked=rows, files_compared=len(files),
           duplicates_found=0, missing=0, orphans=0)


APPLY_INPUTS = 24
APPLY_SHARD = 8
APPLY_WRITERS = 2  # writer threads of a CPU shard (tasks/inference io_threads_for): one more output may land


@pytest.fixture
def apply_input(photos, tmp_path) -> Path:
    """Twenty-four images of 1-4 tiles and a broken file (an error row, in the last shard)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(APPLY_INPUTS):
        (folder / f"noise{i:02d}.png").write_bytes(noise_png(60 + 3 * i, 40 + 2 * i, seed=2000 + i))
    shutil.copy(photos.folder / "truncated.jpg", folder / "truncated.jpg")
    return folder


def apply_args(ws: Path, folder: Path, out: Path) -> list[str]:
    return ["apply", "tiny", "--input", str(folder), "--output", str(out), "--workspace", str(ws), "--tile", "64",
            "--shard-size", str(APPLY_SHARD), "--workers", "1"]


def test_apply_killed_three_times_then_rerun_writes_the_same_outputs(prefect, apply_input, tmp_path):
    from tests.tasks.inference.test_apply import register_tiny  # torch: only this test needs it

    base_ws, base_out, ws, out = tmp_path / "base", tmp_path / "base-out", tmp_path / "ws", tmp_path / "out"
    for workspace in (base_ws, ws):
        register_tiny(str(workspace))  # seeded: the same weights in both
    code, text = run_cli(apply_args(base_ws, apply_input, base_out), prefect.env(), tmp_path / "baseline.log")
    assert code == 0, text[-3000:]

    args, total = apply_args(ws, apply_input, out), APPLY_INPUTS + 1
    # One shard at a time (--workers 1). Kill 1: the 3rd output of the first shard; kill 2: as the 2nd shard is
    # about to be recorded (the first recorded, the second's 8 outputs on storage); kill 3: the 5th output of the
    # first shard of what is left.
    kills = ["storage.write:3", "shard.commit:2", "storage.write:5"]
    killed = []
    for i, fault in enumerate(kills):
        before, parts = snapshot(out), part_names(ws, "predictions", "tiny")
        pid = run_to_fault(args, prefect.env(), tmp_path / f"killed-{i}.log", fault, where=only_under(fault, out))
        killed.append(killed_run(prefect, ws, "apply", "tiny", pid))
        written = written_since(out, before)
        new_parts = part_names(ws, "predictions", "tiny") - parts
        orphans = written - named_by_rows(ws, "predictions", "tiny", ("output_uri", "overlay_uri"))
        if fault.startswith("storage.write"):
            nth = int(fault.rsplit(":", 1)[1])
            assert nth <= len(written) <= nth + APPLY_WRITERS - 1 and new_parts == set() and orphans == written, \
                (fault, len(written), new_parts)
        else:
            assert len(written) == 2 * APPLY_SHARD and len(new_parts) == 1 and len(orphans) == APPLY_SHARD, \
                (len(written), new_parts, len(orphans))
    assert committed_rows(ws, "predictions", "tiny") == APPLY_SHARD  # the rerun has most of the work left

    code, text = run_cli(args, prefect.env(), tmp_path / "rerun.log")
    assert code == 0, text[-3000:]
    counts = audit_predictions(ws, "tiny", out, {f"file://{p}" for p in apply_input.iterdir()})
    assert counts.pop("rows_checked") == total
    assert set(counts.values()) == {0}, counts
    strip = lambda rows: {k[-1].rsplit("/", 1)[1]: v for k, v in rows.items()}  # noqa: E731  (key: input name)
    assert strip(rows_by_key(ws, "predictions", "tiny", PREDICTION_FIELDS)) == \
        strip(rows_by_key(base_ws, "predictions", "tiny", PREDICTION_FIELDS))
    files = output_tree(out)
    assert len(files) == APPLY_INPUTS and files == output_tree(base_out)  # names, pixels, provenance
    # exactly once: each file was written by the run its row names (a killed run's, or the rerun's)
    for row in Catalog(ws).read("predictions", "tiny").to_pylist():
        if row["status"] == "ok":
            assert provenance_of(storage.read_bytes(row["output_uri"]))["run_id"] == row["run_id"], row["output_uri"]
    assert_marked_crashed(prefect, killed, "apply", "tiny")
    record("apply kill -9", runs_killed=len(killed), rows_checked=total, files_compared=len(files),
           duplicates_found=0, missing=0, orphans=0)
