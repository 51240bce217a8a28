"""The apply flow on a real Prefect server: artifacts, the CLI, Dask against threads, the catalog summary."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from pixelmill.flows.apply import run_apply
from pixelmill.flows.cli import app
from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.inference.apply import ApplyConfig
from tests.faults.driver import output_digest
from tests.helpers import noise_png
from tests.tasks.inference.test_apply import register_tiny

pytestmark = pytest.mark.usefixtures("prefect_server")
torch.set_num_threads(1)


def fill(folder, n: int = 6) -> None:
    for i in range(n):
        (folder / f"sub{i % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"sub{i % 2}" / f"p{i}.png").write_bytes(noise_png(40 + 4 * i, 36, seed=i))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")


def fingerprint(ws: str, model: str, output: str) -> dict[str, tuple]:
    """input -> (status, error kind, output name, digest of its pixels and provenance): what must agree between
    runners."""
    rows = Catalog(ws).read("predictions", model).to_pylist()
    output = storage.normalize_url(output)
    return {r["input_uri"]: (r["status"], (r["error"] or "").split(":")[0],
                             r["output_uri"] and r["output_uri"].removeprefix(output),
                             r["output_uri"] and output_digest(storage.read_bytes(r["output_uri"])))
            for r in rows if r["output_root"] == output}


def test_flow_summary_artifacts_and_rerun(tmp_path):
    from prefect.artifacts import Artifact

    ws = str(tmp_path / "ws")
    ref = register_tiny(ws, name="sr", scale=2)
    fill(tmp_path / "in")
    cfg = ApplyConfig(tile=32, overlap=8, shard_size=2)
    s = run_apply(ref, str(tmp_path / "in"), str(tmp_path / "out"), cfg, workspace=ws)
    assert (s["processed"], s["failed"], s["skipped"]) == (6, 1, 0) and s["images_per_s"] > 0
    assert s["error_kinds"] == {"corrupt": 1} or s["error_kinds"] == {"truncated": 1}
    summary = Artifact.get("apply-sr")
    assert "6 processed, 0 skipped (already done), 1 failed" in summary.data
    assert summary.data.count("data:image/jpeg;base64,") == 8  # 4 before/after pairs
    assert len(summary.data) < 100_000
    progress = Artifact.get("apply-progress-sr")
    assert progress.type == "progress" and progress.data == 100.0

    again = run_apply(ref, str(tmp_path / "in"), str(tmp_path / "out"), cfg, workspace=ws)
    assert (again["processed"], again["failed"], again["skipped"]) == (0, 0, 7)
    assert "Nothing new to process" in Artifact.get("apply-sr").data
    assert Catalog(ws).read("predictions", "sr").num_rows == 7


@pytest.mark.slow  # measured 28 s on 2 shared, loaded cores
def test_dask_local_cluster_gives_the_same_catalog_as_threads(tmp_path):
    ws = str(tmp_path / "ws")
    ref = register_tiny(ws, name="sr")
    fill(tmp_path / "in")
    cfg = ApplyConfig(tile=32, overlap=8, shard_size=2, workers=2)
    run_apply(ref, str(tmp_path / "in"), str(tmp_path / "threads"), cfg, workspace=ws)
    run_apply(ref, str(tmp_path / "in"), str(tmp_path / "dask"), cfg, workspace=ws, runner="dask")
    threads = fingerprint(ws, "sr", str(tmp_path / "threads"))
    dask = fingerprint(ws, "sr", str(tmp_path / "dask"))
    assert len(threads) == 7 and threads == dask


def test_cli_apply_and_catalog_show_predictions(tmp_path):
    ws = str(tmp_path / "ws")
    register_tiny(ws, name="sr")
    fill(tmp_path / "in", n=2)
    runner = CliRunner()
    result = runner.invoke(app, ["apply", "sr", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                 "--workspace", ws, "--tile", "32", "--overlap", "8", "--format", "webp",
                                 "--max-memory", "1GiB"])
    assert result.exit_code == 0, result.output
    assert "2 processed, 0 skipped, 1 failed" in result.output and "broken.jpg" in result.output
    assert len(list((tmp_path / "out").rglob("*.webp"))) == 2
    shown = runner.invoke(app, ["catalog", "show", "predictions", "--workspace", ws])
    assert shown.exit_code == 0, shown.output
    assert "3 inputs, 0 flagged." in shown.output and "sr:v1" in shown.output and "| ok | 2 |" in shown.output

    bad = runner.invoke(app, ["apply", "sr", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                              "--workspace", ws, "--tile", "32", "--overlap", "32"])
    assert bad.exit_code == 1 and "error: overlap 32 must be smaller than tile 32" in bad.output
    unknown = runner.invoke(app, ["apply", "nope", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                                  "--workspace", ws])
    assert unknown.exit_code == 1 and "unknown model 'nope'" in unknown.output and "hint:" in unknown.output
    memory = runner.invoke(app, ["apply", "sr", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                                 "--workspace", ws, "--max-memory", "lots"])
    assert memory.exit_code == 1 and "memory size" in memory.output


def test_flagged_outputs_are_shown_beside_their_inputs_and_sent_as_an_event(tmp_path):
    """A model built to tint everything: every output flagged, the summary shows 1:1 crops, the server receives a
    `pixelmill.apply.flagged` event with the counts, and `pixelmill review RUN_ID` lists them."""
    import time

    import httpx
    from prefect.artifacts import Artifact
    from prefect.settings import PREFECT_API_URL

    from tests.tasks.inference.test_fidelity import register_shift

    ws = str(tmp_path / "ws")
    register_shift(ws)
    fill(tmp_path / "in")
    s = run_apply("shift", str(tmp_path / "in"), str(tmp_path / "out"), ApplyConfig(), workspace=ws)
    assert (s["processed"], s["flagged"]) == (6, 6), s
    summary = Artifact.get("apply-shift").data
    assert f"**6 outputs flagged** by the checks: `pixelmill review {s['run_id']}`" in summary
    assert summary.count("data:image/png;base64,") == 8  # 4 flagged outputs beside their inputs, 1:1 crops
    assert "drift" in summary

    deadline = time.monotonic() + 60  # events leave from a background worker
    while True:
        events = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", timeout=10, json={
            "filter": {"event": {"name": ["pixelmill.apply.flagged"]}}, "limit": 50}).json()["events"]
        mine = [e for e in events if e["payload"].get("run_id") == s["run_id"]]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(mine) == 1, events
    assert mine[0]["payload"]["flagged"] == 6 and mine[0]["payload"]["reasons"].get("drift") == 6
    assert mine[0]["resource"]["prefect.resource.id"] == "pixelmill.model.shift"

    review = CliRunner().invoke(app, ["review", s["run_id"], "--workspace", ws])
    assert review.exit_code == 0, review.output
    assert "6 of 7 outputs flagged" in review.output and "drift" in review.output
