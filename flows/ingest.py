"""Ingest flow: a folder, bucket or archive of images -> the `images` catalog table.

    pixelmill ingest ./photos --dataset photos
    pixelmill ingest s3://bucket/camvid/train --dataset camvid-train --masks s3://bucket/camvid/trainannot
    pixelmill ingest archive.zip --masks '{stem}_P.png'
"""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from pixelmill.flows.console import report_progress
from pixelmill.tasks import steps
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.reports import artifact_key, images_markdown, images_summary
from pixelmill.tasks.core.settings import workspace_url
from pixelmill.tasks.prep.ingest import IngestConfig, dataset_name_for

# Shards in flight at once: each already runs IngestConfig.io_threads threads, and Prefect's default
# pool is unbounded (a 1,000-shard plan would start 8,000 threads, each holding a decoded image).
SHARDS_AT_ONCE = 4


def run_name() -> str:
    """`ingest-{dataset}`: the data set may be left to default to the source's base name."""
    params = flow_run.parameters
    return f"ingest-{params.get('dataset') or dataset_name_for(params['source'])}"


@flow(name="ingest", flow_run_name=run_name, task_runner=ThreadPoolTaskRunner(max_workers=SHARDS_AT_ONCE))
def ingest(source: str, dataset: str | None = None, workspace: str | None = None,
           config: IngestConfig | None = None) -> dict:
    """Catalog every file under `source`: one row per file, bad files as error rows, reruns incremental."""
    logger = get_run_logger()
    config = config or IngestConfig()
    workspace = workspace_url(workspace)
    dataset = dataset or dataset_name_for(source)
    steps.watch_run("ingest", dataset, workspace)  # before any work: a run killed with -9 is marked by the next

    plan = steps.plan_ingest(source, dataset, workspace, config)
    logger.info("%s: %d files to ingest in %d shards, %d unchanged, %d mask files, %d other files skipped",
                dataset, sum(len(s.files) for s in plan.shards), len(plan.shards), plan.unchanged,
                plan.mask_files, plan.other_files)

    progress = create_progress_artifact(0.0, key=artifact_key("ingest-progress", dataset),
                                        description=f"ingest {dataset}: shards done")
    futures = steps.ingest_shard.map(plan.shards, workspace=unmapped(workspace), cfg=unmapped(config))
    for done, future in enumerate(as_completed(futures), start=1):
        future.result()  # a shard that failed after its retries fails the flow, with its error
        update_progress_artifact(progress, 100.0 * done / len(plan.shards))
        report_progress(f"ingest {dataset}: shards", done, len(plan.shards))
    if not plan.shards:
        update_progress_artifact(progress, 100.0)

    steps.finalize_dataset(workspace, dataset)
    summary = images_summary(Catalog(workspace).read("images", dataset))
    summary |= {"dataset": dataset, "workspace": workspace, "new_or_changed": sum(len(s.files) for s in plan.shards),
                "unchanged": plan.unchanged, "other_files": plan.other_files}
    create_markdown_artifact(
        images_markdown(summary, f"ingest {dataset}") +
        f"\n\n{summary['new_or_changed']} new or changed, {plan.unchanged} unchanged, "
        f"{plan.other_files} non-image files skipped.",
        key=artifact_key("ingest", dataset),
        description=f"images catalog summary for {dataset}")
    return summary


if __name__ == "__main__":
    import sys

    print(ingest(sys.argv[1]))
