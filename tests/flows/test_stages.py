"""`run_stage` runs any declared stage: a made-up one (a per-image score over a list of names) on a real Prefect
server, the way a new bulk job would plug in."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pixelmill.flows.console import set_progress_sink
from pixelmill.flows.stages import Stage, StageRun, run_stage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.shards import ShardResult, chunks, commit_shard, error_row, shard_id
from pixelmill.tasks.core.tables import TABLES

pytestmark = pytest.mark.usefixtures("prefect_server")


@dataclass(frozen=True)
class Shard:
    group: str
    shard_id: str
    names: tuple[str, ...]


@dataclass
class Plan:
    group: str
    shards: list[Shard]
    done: int


running = {"now": 0, "most": 0}
lock = threading.Lock()


@task(cache_policy=NO_CACHE)
def plan_scores(workspace: str, group: str, names: list[str], size: int) -> Plan:
    done = set(Catalog(workspace).read("images", group, columns=["uri"])["uri"].to_pylist())
    todo = [n for n in names if n not in done]
    return Plan(group, [Shard(group, shard_id(group, chunk), chunk) for chunk in chunks(todo, size)], len(done))


def score_one(name: str, group: str) -> dict:
    row = {"dataset": group, "uri": name, "status": "ok", "ingested_at": datetime.now(UTC)}
    try:
        if name.startswith("bad"):
            raise ValueError("not an image")
        if name.startswith("outage"):
            raise ConnectionResetError("connection reset by peer")
    except Exception as exc:
        return row | {"status": "error", "error": error_row(exc, "unreadable")}
    return row


@task(cache_policy=NO_CACHE)
def score_shard(shard: Shard, workspace: str, pause: float = 0.0) -> ShardResult:
    with lock:
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
    try:
        time.sleep(pause)
        rows = [score_one(n, shard.group) for n in shard.names]
        return commit_shard(Catalog(workspace), "images", shard.group, shard.shard_id, rows)
    finally:
        with lock:
            running["now"] -= 1


def summarize(run: StageRun) -> tuple[dict, str]:
    images = TABLES["images"]
    summary = images.summary(Catalog(run.workspace).read("images", run.group)) | {
        "scored": run.items, "already": run.plan.done}
    return summary, images.markdown(summary, f"score {run.group}")


SCORE = Stage(name="score", table="images", plan=plan_scores, run_shard=score_shard, group=lambda p: p.group,
              shards=lambda p: p.shards, items=lambda s: len(s.names), describe=lambda p: f"{len(p.shards)} shards",
              summary=summarize)


@flow
def score(workspace: str, group: str, names: list[str], workers: int = 2, pause: float = 0.0,
          runner: str | None = None) -> dict:
    return run_stage(SCORE, workspace, workers, plan=dict(workspace=workspace, group=group, names=names, size=2),
                     shard=dict(pause=pause), runner=runner)


def test_a_declared_stage_runs_with_its_window_progress_rows_and_summary(tmp_path):
    from prefect.artifacts import Artifact

    ws = str(tmp_path / "ws")
    names = ["a", "b", "bad-1", "c", "d", "e", "f"]
    seen: list[tuple] = []
    set_progress_sink(lambda what, done, total: seen.append((what, done, total)))
    running["most"] = 0
    try:
        first = score(ws, "q", names, workers=2, pause=0.3)
    finally:
        set_progress_sink(None)
    assert running["most"] == 2  # --workers shards in flight, never more
    assert seen == [("score q: shards", n, 4) for n in range(1, 5)]
    assert (first["scored"], first["already"], first["status"]) == (7, 0, {"error": 1, "ok": 6})
    errors = {r["uri"]: r["error"] for r in Catalog(ws).read("images", "q").to_pylist()}
    assert errors["bad-1"] == "unreadable: ValueError: not an image" and errors["a"] is None  # a failure is a row
    assert Artifact.get("score-progress-q").data == 100.0
    assert "## score q" in Artifact.get("score-q").data

    again = score(ws, "q", names)  # what is done is planned away: nothing to run, the same summary
    assert (again["scored"], again["already"], again["status"]) == (0, 7, first["status"])
    assert Artifact.get("score-progress-q").data == 100.0


def test_a_transient_error_fails_the_shard_and_the_run(tmp_path):
    ws = str(tmp_path / "ws")
    with pytest.raises(ConnectionResetError):
        score(ws, "t", ["a", "outage-1"])
    assert Catalog(ws).read("images", "t").num_rows == 0  # no row claims the store's outage was the image's


def test_each_stage_declares_the_folders_its_writers_leave_temporary_files_in(tmp_path):
    """The lease's cleanup removes killed writers' files only there: the table's group and the stage's outputs."""
    from types import SimpleNamespace

    from pixelmill.flows.apply import APPLY
    from pixelmill.flows.crappify import CRAPPIFY
    from pixelmill.flows.ingest import INGEST

    ws = f"file://{tmp_path}"
    assert INGEST.folders(ws, SimpleNamespace(dataset="d")) == [f"{ws}/catalog/images/d"]
    assert CRAPPIFY.folders(ws, SimpleNamespace(set_name="d-x")) == [f"{ws}/catalog/pairs/d-x", f"{ws}/datasets/d-x"]
    plan = SimpleNamespace(model=SimpleNamespace(name="sr2"), output="s3://b/out")
    assert APPLY.folders(ws, plan) == [f"{ws}/catalog/predictions/sr2", "s3://b/out"]
