"""Thin Prefect wrappers around the pure functions: names, retries, logging. No logic lives here.

Caching is off: idempotence comes from the catalog (a rerun of a shard rewrites the same part), and
Prefect's result cache would only add input hashing to every call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import crappify, ingest, storage
from tasks.catalog import Catalog

if TYPE_CHECKING:
    from tasks.train import TrainConfig, TrainResult

# Transient storage errors are already retried inside tasks/storage.py; a task-level retry covers the
# rest (a worker lost mid-shard). Retrying a shard is safe because its catalog part is replaced whole.
SHARD_RETRIES = dict(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)


@task(name="plan_ingest", cache_policy=NO_CACHE)
def plan_ingest(source: str, dataset: str, workspace: str, cfg: ingest.IngestConfig) -> ingest.IngestPlan:
    """List the source and keep the files that are new or changed."""
    existing = ingest.existing_versions(Catalog(workspace), dataset)
    return ingest.plan_ingest(dataset, storage.iter_files(source), existing, cfg)


@task(name="ingest_shard", task_run_name="ingest-{shard.dataset}-{shard.shard_id}", **SHARD_RETRIES)
def ingest_shard(shard: ingest.Shard, workspace: str, cfg: ingest.IngestConfig) -> ingest.ShardResult:
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
                   processes: int = 1) -> ingest.ShardResult:
    """Make a shard's pairs and write its catalog part."""
    return crappify.crappify_shard(shard, workspace, cfg, processes)


@task(name="train_model", cache_policy=NO_CACHE)
def train_model(cfg: TrainConfig, train_records: list, val_records: list, scale: int, checkpoint_uri: str,
                resume: bool, cache_dir: str | None, init_weights: dict | None = None) -> TrainResult:
    """Run the training loop; progress and checkpoints go out at every validation."""
    from prefect import get_run_logger
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from tasks import train  # torch is imported only by the flows that train

    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"training {cfg.arch}: share of the step/time budget")

    def on_validation(metrics: dict) -> None:
        logger.info("step %(step)d  train_loss %(train_loss).4f  val_loss %(val_loss).4f  "
                    "val_psnr_y %(val_psnr_y).2f dB (baseline %(val_psnr_y_baseline).2f)", metrics)
        budget = max(metrics["step"] / cfg.steps, metrics["elapsed_s"] / 60 / (cfg.max_minutes or 1e9))
        update_progress_artifact(progress, min(100.0, 100.0 * budget))

    state = train.load_state(storage.read_bytes(checkpoint_uri)) if resume else None
    hooks = train.TrainHooks(on_validation, lambda data: storage.write_bytes(checkpoint_uri, data))
    return train.train_model(cfg, train_records, val_records, scale, hooks, resume=state, cache_dir=cache_dir,
                             init_weights=init_weights)


@task(name="evaluate_model", cache_policy=NO_CACHE)
def evaluate_model(workspace: str, ref: str, records: list, scale: int, gallery: int = 3) -> tuple[list, list]:
    """Per-pair scores of a model version and of the baseline (and a few images for the report)."""
    from tasks import evaluate, registry, train

    mv = registry.resolve(workspace, ref)
    model, config, _ = registry.load(mv)
    return evaluate.evaluate_model(model, records, scale, config.get("in_channels", 3), train.pick_device(), gallery)
