"""Two `pixelmill apply` runs started at once on the same input and output. Both are held at their first shard's
commit (PIXELMILL_FAULT_HOLD: each has written that shard's outputs and recorded nothing) and let go together, so
they certainly overlap for the rest of the work; afterwards there are 0 duplicate prediction rows (in what the
catalog reads and in the Parquet parts on disk, after both runs' compaction), 0 torn files (every output decodes
whole and equals the single-run output) and 0 temporary files."""

from __future__ import annotations

import io
import time
from collections import Counter
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.faults.driver import (
    PREDICTION_FIELDS,
    Cli,
    audit_predictions,
    fault_env,
    files_under,
    leases,
    output_tree,
    record,
    rows_by_key,
    run_cli,
    temp_files,
)
from tests.helpers import noise_png

pytestmark = pytest.mark.slow  # a single run and two at once: 42 s on 2 shared cores

INPUTS, SHARD = 24, 8


def apply_args(ws: Path, folder: Path, out: Path) -> list[str]:
    return ["apply", "tiny", "--input", str(folder), "--output", str(out), "--workspace", str(ws), "--tile", "64",
            "--shard-size", str(SHARD), "--workers", "1"]


def wait_until_held(gate: Path, clis: list[Cli], timeout: float = 240) -> None:
    """Until every command says it reached its hold point (the file gate.PID); fail if one ends instead."""
    deadline = time.monotonic() + timeout
    while not all(Path(f"{gate}.{cli.proc.pid}").exists() for cli in clis):
        for cli in clis:
            assert cli.proc.poll() is None, f"`pixelmill {' '.join(cli.args)}` ended before its hold point: " \
                                            f"{cli.log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, "the runs never reached their hold point"
        time.sleep(0.1)


def test_two_apply_runs_on_one_output_leave_no_duplicates_torn_or_temporary_files(prefect, tmp_path):
    from tests.tasks.inference.test_apply import register_tiny  # torch: only this test needs it

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(INPUTS):
        (folder / f"noise{i:02d}.png").write_bytes(noise_png(60 + 3 * i, 40 + 2 * i, seed=3000 + i))
    base_ws, base_out, ws, out = tmp_path / "base", tmp_path / "base-out", tmp_path / "ws", tmp_path / "out"
    for workspace in (base_ws, ws):
        register_tiny(str(workspace))  # seeded: the same weights in both
    code, text = run_cli(apply_args(base_ws, folder, base_out), prefect.env(), tmp_path / "single.log")
    assert code == 0, text[-3000:]

    gate = tmp_path / "gate"
    env = fault_env(prefect.env(), "shard.commit:1", hold=str(gate))
    both = [Cli(apply_args(ws, folder, out), env, tmp_path / f"run{i}.log") for i in (1, 2)]
    try:
        wait_until_held(gate, both)
        # Both under way at once: each holds a lease, the first shard's outputs are on storage, no row is.
        held = leases(ws, "apply", "tiny")
        assert sorted(lease.pid for lease in held) == sorted(c.proc.pid for c in both)
        assert len(files_under(out)) == SHARD and not (ws / "catalog" / "predictions").exists()
    finally:
        gate.touch()
    results = [cli.wait(timeout=300) for cli in both]
    for code, text in results:
        assert code == 0, text[-3000:]
    assert any("1 other run(s) alive" in text for _, text in results)
    for lease in held:  # neither took the other for a dead run
        state = httpx.get(f"{prefect.url}/flow_runs/{lease.flow_run_id}", timeout=10).json()["state"]
        assert state["type"] == "COMPLETED", state

    # 0 duplicate rows: what the catalog reads, and every Parquet part on disk read directly
    counts = audit_predictions(ws, "tiny", out, {f"file://{p}" for p in folder.iterdir()})
    assert counts.pop("rows_checked") == INPUTS
    assert set(counts.values()) == {0}, counts  # duplicates, missing, orphans, shared or missing files, temp files
    parts = sorted((ws / "catalog" / "predictions" / "tiny").glob("*.parquet"))
    keys = Counter(r["input_uri"] for p in parts for r in pq.read_table(p).to_pylist())
    assert len(keys) == INPUTS and set(keys.values()) == {1}, keys.most_common(3)
    strip = lambda rows: {k[-1].rsplit("/", 1)[1]: v for k, v in rows.items()}  # noqa: E731  (key: input name)
    assert strip(rows_by_key(ws, "predictions", "tiny", PREDICTION_FIELDS)) == \
        strip(rows_by_key(base_ws, "predictions", "tiny", PREDICTION_FIELDS))

    # 0 torn files: each output decodes whole and is the single run's: the same pixels and provenance (but the
    # run id, which names whichever of the two wrote it last)
    for path in files_under(out):
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            img.load()
    assert output_tree(out) == output_tree(base_out) and len(output_tree(out)) == INPUTS
    # 0 temporary files, in the workspace and in the output
    assert temp_files(ws) == [] and temp_files(out) == []
    assert leases(ws, "apply", "tiny") == []
    record("two apply runs at once", runs=2, rows_checked=sum(keys.values()), files_compared=INPUTS,
           duplicates_found=0, torn_files=0, temp_files=0)

