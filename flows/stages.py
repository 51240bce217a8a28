"""Bulk stages, declared once, run by one helper.

A bulk stage (ingest, crappify, apply, any new per-item job over a bucket) declares, in its flow module:
    plan        a task: list the inputs, skip what is done, cut the rest into shards
    run_shard   a task: one shard's work, its outputs first and its catalog part last (a ShardResult)
    table       the catalog table its shards write; the group (data set, paired set, model) comes from the plan
    outputs     the folders its shards write, for the lease's cleanup of what killed writers left
    summary     the run's summary dict and Markdown, from the catalog
and its flow is `run_stage(STAGE, workspace, workers, plan=..., shard=..., runner=...)`. The helper does the rest,
the same way for every stage: the run's lease, shards in flight on the runner (flows/runners.py: threads, with a
local process pool of `workers` for a `pool` stage; processes; Dask), the progress artifact and the terminal bar,
the compaction, the summary artifact. An item's failure inside a shard is a row (tasks/core/shards.py
`error_row`); a shard that still fails after its retries (tasks/steps.py SHARD_RETRIES) fails the run.

`--workers` means one thing for every stage: shards in flight at once, each on one worker (a thread, a pool
process or a Dask worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.reports import artifact_key
from pixelmill.tasks.core.shards import ShardResult
from pixelmill.tasks.core.tables import table as table_of


@dataclass
class StageRun:
    """One run of a stage, as its summary sees it."""

    workspace: str
    group: str
    plan: Any  # the stage's own plan (IngestPlan, CrappifyPlan, ApplyPlan)
    params: dict  # what the plan was made from (the flow's arguments)
    results: list[ShardResult] = field(default_factory=list)
    run_id: str = ""
    seconds: float = 0.0

    @property
    def items(self) -> int:
        return sum(r.items for r in self.results)


@dataclass(frozen=True)
class Stage:
    name: str  # ingest, crappify, apply: the lease's stage, the artifacts' and progress lines' prefix
    table: str  # the catalog table its shards write (tasks/core/tables.py)
    plan: Callable  # (**plan params) -> the stage's plan; a task in tasks/steps.py
    run_shard: Any  # a task in tasks/steps.py: (shard, workspace=..., **shard options) -> ShardResult
    group: Callable[[Any], str]  # plan -> the group this run writes: a data set, a paired set, a model name
    shards: Callable[[Any], Sequence]  # plan -> its shards (what is done already is not in them)
    items: Callable[[Any], int]  # shard -> how many items it holds
    describe: Callable[[Any], str]  # plan -> one log line: what it found
    summary: Callable[[StageRun], tuple[dict, str]]  # the run -> (summary, Markdown) from the catalog
    outputs: Callable[[str, Any], list[str]] = lambda workspace, plan: []  # folders beyond the table's group
    finish: Callable[[str, str], int] | None = None  # (workspace, group) after the shards; None: compact the group
    pool: Callable[[int], None] | None = None  # on threads: start a local pool of `workers` processes for shards
    shards_per_worker: int = 1  # in flight per worker: 2 keeps a queued shard ready when one ends (a pool stage)
    progress_in_items: bool = False  # progress counts items (images) instead of shards

    def window(self, workers: int) -> int:
        return max(1, workers * self.shards_per_worker)

    def folders(self, workspace: str, plan) -> list[str]:
        """Where this run writes: the table's group and the stage's own outputs."""
        return [storage.join(Layout.of(workspace).table(self.table), self.group(plan)), *self.outputs(workspace, plan)]


def run_stage(stage: Stage, workspace: str, workers: int, plan: dict, shard: dict | None = None,
              runner: str | None = None, shared: Sequence[str] = ()) -> dict:
    """Run a stage inside its flow: plan, lease, shards in flight, progress, finish, summary artifact.

    `plan`: the arguments of stage.plan; `shard`: options passed to every stage.run_shard call (a config);
    `runner`: where the shards run (flows/runners.py; None: $PIXELMILL_RUNNER, else threads); `shared`: folders
    besides the workspace that the shards write, which a remote cluster must see."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    from pixelmill.flows.runners import running_on

    started = time.perf_counter()
    options = dict(shard or {})
    with running_on(runner, workers, workspace, stage.window(workers), shared) as (name, slots):
        workers = max(workers, slots or 0)  # a cluster's workers all take shards
        if stage.pool is not None:
            # On threads, each shard runs whole in a child of one local pool of `workers` processes, started
            # before the planning so that its start overlaps it; elsewhere the runner's workers are the processes.
            options["processes"] = workers if name == "threads" and not workspace.startswith("memory://") else 0
            if options["processes"]:
                stage.pool(options["processes"])
        run = run_shards(stage, workspace, workers, plan, options, str(FlowRunContext.get().flow_run.id), name)
    run.seconds = time.perf_counter() - started
    summary, markdown = stage.summary(run)
    create_markdown_artifact(markdown, key=artifact_key(stage.name, run.group),
                             description=f"{stage.name} {run.group}: {table_of(stage.table).group} summary")
    return summary


def run_shards(stage: Stage, workspace: str, workers: int, plan: dict, options: dict, run_id: str,
               runner: str) -> StageRun:
    """Plan, then the shards in flight on the current task runner, then the compaction (or the stage's finish)."""
    from prefect import get_run_logger
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from pixelmill.flows.console import report_progress
    from pixelmill.flows.runners import in_window
    from pixelmill.tasks import steps

    logger = get_run_logger()
    planned = stage.plan(**plan)
    group, shards = stage.group(planned), list(stage.shards(planned))
    steps.watch_run(stage.name, group, workspace, *stage.folders(workspace, planned))  # before any shard writes
    logger.info("%s%s", stage.describe(planned), "" if runner == "threads" else f"; shards run on {runner}")

    run = StageRun(workspace, group, planned, plan, run_id=run_id)
    total = sum(stage.items(s) for s in shards) if stage.progress_in_items else len(shards)
    unit = "images" if stage.progress_in_items else "shards"
    progress = create_progress_artifact(0.0, key=artifact_key(f"{stage.name}-progress", group),
                                        description=f"{stage.name} {group}: {unit} done")

    def submit(item):
        return stage.run_shard.submit(item, workspace=workspace, **options)

    done = 0
    for future in in_window(submit, shards, stage.window(workers)):
        result = future.result()  # a shard that failed after its retries fails the flow, with its error
        run.results.append(result)
        done += result.items if stage.progress_in_items else 1
        update_progress_artifact(progress, 100.0 * done / max(1, total))
        report_progress(f"{stage.name} {group}: {unit}", done, total)
    if not shards:
        update_progress_artifact(progress, 100.0)

    if stage.finish is not None:
        stage.finish(workspace, group)
    else:
        removed = steps.compact_catalog(workspace, stage.table, group)  # also repairs older runs' duplicates
        if removed:
            logger.info("%s: removed %d duplicate %s rows left by overlapping or earlier runs", group, removed,
                        stage.table)
    return run
