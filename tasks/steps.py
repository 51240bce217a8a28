"""Thin Prefect wrappers around the pure functions: names, retries, logging. No logic lives here.

Caching is off: idempotence comes from the catalog (a rerun of a shard rewrites the same part), and
Prefect's result cache would only add input hashing to every call.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import crappify, ingest, storage
from tasks.catalog import Catalog

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
def crappify_shard(shard: crappify.CrappifyShard, workspace: str, cfg: crappify.CrappifyConfig) -> ingest.ShardResult:
    """Make a shard's pairs and write its catalog part."""
    return crappify.crappify_shard(shard, workspace, cfg)
