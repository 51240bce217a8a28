"""Ingest flow: a folder, bucket or archive of images -> the `images` catalog table.

    pixelmill ingest ./photos --dataset photos
    pixelmill ingest s3://bucket/camvid/train --dataset camvid-train --masks s3://bucket/camvid/trainannot
    pixelmill ingest archive.zip --masks '{stem}_P.png'
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from pixelmill.flows.events import emit_ingested
from pixelmill.flows.stages import Stage, StageRun, run_stage
from pixelmill.tasks import steps
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.settings import workspace_url
from pixelmill.tasks.core.tables import TABLES
from pixelmill.tasks.prep.ingest import IngestConfig, IngestPlan, dataset_name_for


def run_name() -> str:
    """`ingest-{dataset}`: the data set may be left to default to the source's base name."""
    params = flow_run.parameters
    return f"ingest-{params.get('dataset') or dataset_name_for(params['source'])}"


def describe(plan: IngestPlan) -> str:
    return (f"{plan.dataset}: {sum(len(s.files) for s in plan.shards)} files to ingest in {len(plan.shards)} "
            f"shards, {plan.unchanged} unchanged, {plan.mask_files} mask files, {plan.other_files} other files "
            "skipped")


def summarize(run: StageRun) -> tuple[dict, str]:
    images = TABLES["images"]
    plan: IngestPlan = run.plan
    summary = images.summary(Catalog(run.workspace).read("images", run.group))
    summary |= {"dataset": run.group, "workspace": run.workspace,
                "new_or_changed": sum(len(s.files) for s in plan.shards), "unchanged": plan.unchanged,
                "other_files": plan.other_files}
    markdown = (images.markdown(summary, f"ingest {run.group}") +
                f"\n\n{summary['new_or_changed']} new or changed, {plan.unchanged} unchanged, "
                f"{plan.other_files} non-image files skipped.")
    return summary, markdown


INGEST = Stage(
    name="ingest", table="images", plan=steps.plan_ingest, run_shard=steps.ingest_shard,
    group=lambda plan: plan.dataset, shards=lambda plan: plan.shards, items=lambda shard: len(shard.files),
    describe=describe, summary=summarize,
    finish=steps.finalize_dataset,  # one row per file and the duplicate flags: the images table's compaction
)


# The stage bounds the shards in flight itself (config.workers) and switches to `runner` for them.
@flow(name="ingest", flow_run_name=run_name, task_runner=ThreadPoolTaskRunner())
def ingest(source: str, dataset: str | None = None, workspace: str | None = None,
           config: IngestConfig | None = None, runner: str | None = None) -> dict:
    """Catalog every file under `source`: one row per file, bad files as error rows, reruns incremental.
    `runner`: threads, processes, dask, dask:PROFILE or a Dask scheduler address (default: $PIXELMILL_RUNNER,
    else threads)."""
    config = config or IngestConfig()
    workspace = workspace_url(workspace)
    dataset = dataset or dataset_name_for(source)
    summary = run_stage(INGEST, workspace, config.workers,
                        plan=dict(source=source, dataset=dataset, workspace=workspace, cfg=config),
                        shard=dict(cfg=config), runner=runner)
    emit_ingested(summary, source)  # apply-nightly's trigger: what was ingested is applied now, not at a set hour
    return summary


if __name__ == "__main__":
    import sys

    print(ingest(sys.argv[1]))
