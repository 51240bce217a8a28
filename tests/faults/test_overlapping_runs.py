"""Two crappify runs with different options on the same paired set at the same time: `--split all` and `--split
train` both make the train pairs. Readers see each pair once as soon as both end; storage holds each pair once after
the next run's compaction; neither run takes the other for a dead one."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests.faults.conftest import crappify_args
from tests.faults.driver import (
    PAIR_FIELDS,
    Cli,
    audit_pairs,
    duplicates,
    fault_env,
    flow_run_of,
    local,
    raw_rows,
    record,
    rows_by_key,
    run_cli,
    tree,
)

pytestmark = pytest.mark.slow  # 15-30 s on 2 busy cores (with the package's server and baseline: +50 s)


def test_split_all_and_split_train_at_once(prefect, photos, baseline, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(baseline / "catalog" / "images", ws / "catalog" / "images")
    # Every pool child of both runs holds at its first shard commit (PIXELMILL_FAULT_HOLD) until the gate opens:
    # neither run can finish before the other has started, however the machine schedules them.
    gate = tmp_path / "gate"
    env = fault_env(prefect.env(), "shard.commit:1", hold=str(gate))
    both = [Cli(crappify_args(ws, "--split", split), env, tmp_path / f"{split}.log") for split in ("all", "train")]
    run_ids, deadline = {}, time.monotonic() + 240
    try:
        while len(run_ids) < 2:  # both hold their lease: both are under way at once
            for cli in both:
                assert cli.proc.poll() is None, cli.log.read_text(errors="replace")[-3000:]
                run_ids[cli.proc.pid] = run_ids.get(cli.proc.pid) or flow_run_of(ws, "crappify", "d-lesson7",
                                                                                 cli.proc.pid)
            run_ids = {pid: run for pid, run in run_ids.items() if run}
            assert time.monotonic() < deadline, "the two runs never held their leases at once"
            time.sleep(0.1)
    finally:
        gate.touch()
    results = [cli.wait() for cli in both]
    for code, out in results:
        assert code == 0, out[-3000:]
    for run_id in run_ids.values():  # each saw the other's lease and left it alone
        assert httpx.get(f"{prefect.url}/flow_runs/{run_id}", timeout=10).json()["state"]["type"] == "COMPLETED"
    assert any("1 other run(s) alive" in out for _, out in results)

    after_both = audit_pairs(ws, "d-lesson7", photos.pairs)
    assert after_both["duplicates_read"] == 0 and after_both["missing"] == 0 and after_both["orphans"] == 0
    left_on_storage = after_both["duplicates_on_storage"]  # a compaction racing the other run may leave some

    code, out = run_cli(crappify_args(ws), prefect.env(), tmp_path / "rerun.log")
    assert code == 0, out[-3000:]
    counts = audit_pairs(ws, "d-lesson7", photos.pairs)
    assert counts.pop("rows_checked") == photos.pairs
    assert counts == {"duplicates_on_storage": 0, "duplicates_read": 0, "missing": 0, "error_rows": 0,
                      "orphans": 0, "shared_files": 0, "files_missing": 0, "temp_files": 0}
    assert duplicates(raw_rows(ws, "pairs", "d-lesson7"), "pairs") == 0
    assert rows_by_key(ws, "pairs", "d-lesson7", PAIR_FIELDS) == \
        rows_by_key(baseline, "pairs", "d-lesson7", PAIR_FIELDS)
    assert tree(local(ws) / "datasets" / "d-lesson7") == tree(local(baseline) / "datasets" / "d-lesson7")
    record("overlapping crappify runs", runs=3, rows_checked=photos.pairs,
           duplicates_on_storage_after_both=left_on_storage, duplicates_found=0)
