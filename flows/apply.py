"""Apply flow: a registered model over a folder, bucket, archive or data set -> outputs + the `predictions` table.

    pixelmill apply sr2@production --input s3://archive/incoming --output s3://archive/enhanced
    pixelmill apply seg --input dataset:camvid-test --output ./masks --overlay
    pixelmill apply sr2 --input ./photos.zip --output ./out --workers 2 --dask local
"""

from __future__ import annotations

import time

import pyarrow.dataset as ds
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from pixelmill.flows.runners import api_for_workers, task_runner_for
from pixelmill.tasks import steps
from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.reports import artifact_key, gallery_markdown, predictions_markdown, predictions_summary
from pixelmill.tasks.core.settings import workspace_url
from pixelmill.tasks.inference.apply import ApplyConfig

GALLERY_IMAGES = 4


def run_name() -> str:
    """`apply-{model}`: the reference as given (an alias says which promotion it follows)."""
    return "apply-" + str(flow_run.parameters["model"]).replace("/", "-")[-60:]


@flow(name="apply", flow_run_name=run_name, task_runner=ThreadPoolTaskRunner(max_workers=1))
def apply(model: str, input: str, output: str, workspace: str | None = None,
          config: ApplyConfig | None = None) -> dict:
    """Run a registered model over every new input; outputs mirror the inputs' names under `output`."""
    logger = get_run_logger()
    started = time.perf_counter()
    config = (config or ApplyConfig()).check()
    workspace = workspace_url(workspace)
    run_id = str(FlowRunContext.get().flow_run.id)

    plan = steps.plan_apply(workspace, model, input, output, config)
    steps.watch_run("apply", plan.model.name, workspace, plan.output)  # a run killed with -9: marked by the next
    logger.info("%s (%s): %d inputs to process in %d shards, %d already done, %d left by --limit, "
                "%d non-image files", plan.model.ref, plan.task, plan.todo, len(plan.shards), plan.skipped,
                plan.limited, plan.other_files)

    progress = create_progress_artifact(0.0, key=artifact_key("apply-progress", plan.model.name),
                                        description=f"apply {plan.model.ref}: images done")
    futures = steps.apply_shard.map(plan.shards, workspace=unmapped(workspace), cfg=unmapped(config),
                                    run_id=unmapped(run_id))
    done = 0
    for future in as_completed(futures):
        done += future.result().items
        update_progress_artifact(progress, 100.0 * done / max(1, plan.todo))
    if not plan.shards:
        update_progress_artifact(progress, 100.0)

    removed = steps.compact_catalog(workspace, "predictions", plan.model.name)
    if removed:
        logger.info("%s: removed %d duplicate prediction rows left by overlapping runs", plan.model.name, removed)
    seconds = time.perf_counter() - started
    mine = Catalog(workspace).read("predictions", plan.model.name, filter=ds.field("run_id") == run_id)
    summary = predictions_summary(mine)
    ok = summary["status"].get("ok", 0)
    summary |= {"model": plan.model.ref, "task": plan.task, "input": input, "output": plan.output,
                "workspace": workspace, "processed": ok, "failed": summary["status"].get("error", 0),
                "skipped": plan.skipped, "limited": plan.limited, "other_files": plan.other_files,
                "seconds": round(seconds, 2), "images_per_s": round(ok / seconds, 3) if seconds else 0.0,
                "run_id": run_id}
    create_markdown_artifact(summary_markdown(summary, mine.to_pylist()), key=artifact_key("apply", plan.model.name),
                             description=f"apply {plan.model.ref} to {input}")
    return summary


def summary_markdown(summary: dict, rows: list[dict]) -> str:
    head = (f"## apply {summary['model']} ({summary['task']})\n\n"
            f"{summary['input']} -> {summary['output']}\n\n"
            f"**{summary['processed']} processed, {summary['skipped']} skipped (already done), "
            f"{summary['failed']} failed**, {summary['images_per_s']} images/s over {summary['seconds']} s"
            + (f"; {summary['limited']} left for the next run by --limit" if summary["limited"] else ""))
    shown = [r for r in rows if r["status"] == "ok"][:GALLERY_IMAGES]
    gallery = gallery_markdown(["before", "after"], [[storage.read_bytes(r["input_uri"]),
                                                      storage.read_bytes(r["output_uri"])] for r in shown])
    body = predictions_markdown(summary, "this run") if rows else "Nothing new to process."
    return f"{head}\n\n**before / after**\n\n{gallery}\n\n{body}" if shown else f"{head}\n\n{body}"


def run_apply(model: str, input: str, output: str, config: ApplyConfig, workspace: str | None = None,
              dask: str | None = None) -> dict:
    """Run the flow on the chosen task runner (a runner is fixed per flow call, so it is chosen here)."""
    # threads share one loaded model, so each worker thread is one shard at once
    runner = task_runner_for(dask, config.workers, workspace_url(workspace), config.workers)
    with api_for_workers(dask):
        return apply.with_options(task_runner=runner)(model, input, output, workspace, config)


if __name__ == "__main__":
    import sys

    print(apply(sys.argv[1], sys.argv[2], sys.argv[3]))
