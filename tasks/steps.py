"""Thin Prefect wrappers around the pure functions: names, retries, logging. No logic lives here.

Caching is off: idempotence comes from the catalog (a rerun of a shard rewrites the same part), and
Prefect's result cache would only add input hashing to every call. Tasks take and return references
(workspace URL, set and model names, model cards, small configs and summaries), never images, tensors or
models.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from pixelmill.tasks.core import runs, storage
from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.core.reports import artifact_key
from pixelmill.tasks.core.shards import ShardResult
from pixelmill.tasks.inference import plan as apply_plan
from pixelmill.tasks.prep import crappify, ingest
from pixelmill.tasks.training.config import TrainConfig


def retry_if_transient(task, task_run, state) -> bool:
    """Retry what a retry can fix: storage hiccups and lost worker processes; never a config or input error."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, PixelmillError):  # the user's to fix: retrying only delays the message
        return False
    return isinstance(exc, BrokenProcessPool | MemoryError) or (isinstance(exc, BaseException)
                                                                and storage.is_transient(exc))


# Transient storage errors are already retried inside tasks/core/storage.py; a task-level retry covers what
# outlasts those (a longer outage, a worker process lost mid-shard). Retrying a shard is safe because its
# catalog part is replaced whole.
SHARD_RETRIES = dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient,
                     cache_policy=NO_CACHE)


def watch_run(stage: str, group: str, workspace: str, *outputs: str) -> runs.Heartbeat:
    """Mark earlier runs of this stage and group whose process is gone as Crashed; keep this run's lease.

    Called first thing in a flow (tasks/core/runs.py says how runs are judged). This run's lease is written
    before the others are read, so of two runs starting together at least one sees the other. When no other
    run is alive, the temporary files that dead writers left in `outputs` (the folders the stage declares:
    its table's group, its output folders) are removed.
    """
    logger = get_run_logger()
    flow_run = FlowRunContext.get().flow_run
    me = str(flow_run.id)
    heartbeat = runs.Heartbeat(workspace, runs.new_lease(me, stage, group),
                               finished=lambda: flow_run.state is not None and flow_run.state.is_final()).start()
    gone, alive = runs.judge(runs.read_leases(workspace, stage, group), me)
    if gone:
        with get_client(sync_client=True) as client:
            for lease, reason in gone:
                try:
                    state = client.read_flow_run(UUID(lease.flow_run_id)).state
                except ObjectNotFound:  # a run recorded on another Prefect server: not ours to mark
                    state = None
                if state is not None and state.type in (StateType.RUNNING, StateType.PENDING):
                    message = f"marked Crashed by a later {stage} run of {group} ({flow_run.name}, {me}): {reason}"
                    client.set_flow_run_state(UUID(lease.flow_run_id), Crashed(message=message), force=True)
                    logger.warning("%s run %s was %s, %s", stage, lease.flow_run_id, state.name, message)
                runs.remove_lease(workspace, lease)
    if alive:
        logger.info("%s %s: %d other run(s) alive: %s", stage, group, len(alive),
                    ", ".join(f"{lease.flow_run_id} (pid {lease.pid} on {lease.host})" for lease in alive))
    else:
        removed = runs.remove_temp_files(dict.fromkeys(outputs))
        if removed:
            logger.info("%s %s: removed %d temporary files left by killed writers", stage, group, removed)
    return heartbeat


@task(name="plan_ingest", cache_policy=NO_CACHE)
def plan_ingest(source: str, dataset: str, workspace: str, cfg: ingest.IngestConfig) -> ingest.IngestPlan:
    """List the source and keep the files that are new or changed."""
    existing = ingest.existing_versions(Catalog(workspace), dataset)
    return ingest.plan_ingest(dataset, storage.iter_files(source), existing, cfg)


@task(name="ingest_shard", task_run_name="ingest-{shard.dataset}-{shard.shard_id}", **SHARD_RETRIES)
def ingest_shard(shard: ingest.Shard, workspace: str, cfg: ingest.IngestConfig) -> ShardResult:
    """Validate a shard of files and write its catalog part."""
    return ingest.ingest_shard(shard, workspace, cfg)


@task(name="finalize_dataset", cache_policy=NO_CACHE)
def finalize_dataset(workspace: str, dataset: str) -> int:
    """One row per file and duplicate flags, across all shards of a data set."""
    return ingest.finalize_dataset(Catalog(workspace), dataset)


@task(name="plan_crappify", cache_policy=NO_CACHE)
def plan_crappify(workspace: str, dataset: str, cfg: crappify.CrappifyConfig) -> crappify.CrappifyPlan:
    """Pick the data set's ok images that have no pair yet for this recipe and seed."""
    return crappify.plan_crappify(Catalog(workspace), dataset, cfg)


@task(name="crappify_shard", task_run_name="crappify-{shard.set_name}-{shard.shard_id}", **SHARD_RETRIES)
def crappify_shard(shard: crappify.CrappifyShard, workspace: str, cfg: crappify.CrappifyConfig,
                   processes: int = 0) -> ShardResult:
    """Make a shard's pairs and write its catalog part (in a pool of `processes` children, or here when 0)."""
    return crappify.crappify_shard(shard, workspace, cfg, processes)


@task(name="plan_apply", cache_policy=NO_CACHE)
def plan_apply(workspace: str, card: ModelCard, source: str, output: str,
               cfg: apply_plan.ApplyConfig) -> apply_plan.ApplyPlan:
    """List the inputs and keep those this model version has not done for this output."""
    return apply_plan.plan_apply(Catalog(workspace), card, source, output, cfg)


@task(name="apply_shard", task_run_name="apply-{shard.model.name}-{shard.shard_id}", **SHARD_RETRIES)
def apply_shard(shard: apply_plan.ApplyShard, workspace: str, cfg: apply_plan.ApplyConfig,
                run_id: str = "") -> ShardResult:
    """Run the model over a shard's inputs, write the outputs, then the shard's catalog part."""
    from pixelmill.tasks.inference.pipeline import apply_shard  # torch: only where a shard runs

    return apply_shard(shard, workspace, cfg, run_id)


@task(name="compact_catalog", task_run_name="compact-{table}-{group}", **SHARD_RETRIES)
def compact_catalog(workspace: str, table: str, group: str) -> int:
    """One row per key in a table group, whatever overlapping runs left behind."""
    return Catalog(workspace).compact(table, group)


@task(name="train_model", task_run_name="train-{name}", cache_policy=NO_CACHE)
def train_model(workspace: str, source: str, name: str, cfg: TrainConfig, resume: bool = False) -> dict:
    """Train on a set, register the model; progress and checkpoints go out at every validation."""
    from prefect import get_run_logger
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from pixelmill.tasks.training.runs import train_and_register  # torch: only in the flows that train

    logger = get_run_logger()
    progress = create_progress_artifact(0.0, key=artifact_key("train-progress", name),
                                        description=f"training {name}: share of the step/time budget")

    def on_validation(metrics: dict) -> None:
        logger.info("step %d  %s", metrics["step"],
                    "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "step" and isinstance(v, float)))
        update_progress_artifact(progress, 100.0 * cfg.progress(metrics["step"], metrics["elapsed_s"]))

    return train_and_register(workspace, source, name, cfg, resume, on_validation, on_start=logger.info)


@task(name="evaluate_model", task_run_name="evaluate-{ref}", cache_policy=NO_CACHE)
def evaluate_model(workspace: str, ref: str, source: str, split: str = "valid", gallery: int = 0,
                   limit: int | None = None, record: bool = True, tta: bool = False) -> dict:
    """Score a registered model and its baseline on a split (rows to the catalog, gallery to the workspace)."""
    from pixelmill.tasks.training.runs import evaluate_registered

    return evaluate_registered(workspace, ref, source, split, gallery, limit, record, tta)
