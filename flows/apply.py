"""Apply flow: a registered model over a folder, bucket, archive or data set -> outputs + the `predictions` table.

    pixelmill apply sr2@production --input s3://archive/incoming --output s3://archive/enhanced
    pixelmill apply seg --input dataset:camvid-test --output ./masks --overlay
    pixelmill apply sr2 --input ./photos.zip --output ./out --workers 2 --runner dask
"""

from __future__ import annotations

import pyarrow.dataset as ds
from prefect import flow
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from pixelmill.flows.events import emit_flagged
from pixelmill.flows.stages import Stage, StageRun, run_stage
from pixelmill.tasks import steps
from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.reports import gallery_markdown, side_by_side
from pixelmill.tasks.core.settings import workspace_url
from pixelmill.tasks.core.tables import TABLES
from pixelmill.tasks.inference.plan import ApplyConfig, ApplyPlan

GALLERY_IMAGES = 4


def run_name() -> str:
    """`apply-{model}`: the reference as given (an alias says which promotion it follows)."""
    return "apply-" + str(flow_run.parameters["model"]).replace("/", "-")[-60:]


def describe(plan: ApplyPlan) -> str:
    return (f"{plan.model.ref} ({plan.task}): {plan.todo} inputs to process in {len(plan.shards)} shards, "
            f"{plan.skipped} already done, {plan.limited} left by --limit, {plan.other_files} non-image files")


def summarize(run: StageRun) -> tuple[dict, str]:
    plan: ApplyPlan = run.plan
    mine = Catalog(run.workspace).read("predictions", run.group, filter=ds.field("run_id") == run.run_id)
    summary = TABLES["predictions"].summary(mine)
    ok = summary["status"].get("ok", 0)
    summary |= {"model": plan.model.ref, "task": plan.task, "input": run.params["source"], "output": plan.output,
                "workspace": run.workspace, "processed": ok, "failed": summary["status"].get("error", 0),
                "skipped": plan.skipped, "limited": plan.limited, "other_files": plan.other_files,
                "seconds": round(run.seconds, 2), "images_per_s": round(ok / run.seconds, 3) if run.seconds else 0.0,
                "run_id": run.run_id}
    if summary["flagged"]:
        emit_flagged(plan.model, summary, run.workspace)
    return summary, summary_markdown(summary, mine.to_pylist())


APPLY = Stage(
    name="apply", table="predictions", plan=steps.plan_apply, run_shard=steps.apply_shard,
    group=lambda plan: plan.model.name, shards=lambda plan: plan.shards, items=lambda shard: len(shard.items),
    describe=describe, summary=summarize,
    outputs=lambda workspace, plan: [plan.output],
    progress_in_items=True,
)


# The stage bounds the shards in flight itself (config.workers: threads sharing one loaded model, one shard each)
# and switches to `runner` for them (flows/runners.py), so the flow's own runner is a plain thread pool.
@flow(name="apply", flow_run_name=run_name, task_runner=ThreadPoolTaskRunner())
def apply(model: str, input: str, output: str, workspace: str | None = None,
          config: ApplyConfig | None = None, runner: str | None = None) -> dict:
    """Run a registered model over every new input; outputs mirror the inputs' names under `output`.
    `runner`: threads, processes, dask, dask:PROFILE or a Dask scheduler address (default: $PIXELMILL_RUNNER,
    else threads)."""
    config = (config or ApplyConfig()).check()
    workspace = workspace_url(workspace)
    card = registry.resolve(workspace, model)  # once per run: the plan and its shards carry the card
    run_id = str(FlowRunContext.get().flow_run.id)  # on every row of the run: its summary reads only its own
    return run_stage(APPLY, workspace, config.workers,
                     plan=dict(workspace=workspace, card=card, source=input, output=output, cfg=config),
                     shard=dict(cfg=config, run_id=run_id), runner=runner, shared=[output])


def summary_markdown(summary: dict, rows: list[dict]) -> str:
    head = (f"## apply {summary['model']} ({summary['task']})\n\n"
            f"{summary['input']} -> {summary['output']}\n\n"
            f"**{summary['processed']} processed, {summary['skipped']} skipped (already done), "
            f"{summary['failed']} failed**, {summary['images_per_s']} images/s over {summary['seconds']} s"
            + (f"; {summary['limited']} left for the next run by --limit" if summary["limited"] else ""))
    shown = [r for r in rows if r["status"] == "ok"][:GALLERY_IMAGES]
    gallery = gallery_markdown(["before", "after"], [[storage.read_bytes(r["input_uri"]),
                                                      storage.read_bytes(r["output_uri"])] for r in shown])
    body = TABLES["predictions"].markdown(summary, "this run") if rows else "Nothing new to process."
    if summary["flagged"]:
        flagged = summary["flagged_rows"][:GALLERY_IMAGES]
        crops = side_by_side([(storage.read_bytes(r["input_uri"]), storage.read_bytes(r["output_uri"]))
                              for r in flagged], ["input (nearest, at the output's size)", "output"])
        head += (f"\n\n**{summary['flagged']} outputs flagged** by the checks: `pixelmill review {summary['run_id']}`"
                 "\n\n" + "\n".join(f"- {r['output_uri']}: {r['reason']}" for r in flagged) + f"\n\n{crops}")
    return f"{head}\n\n**before / after**\n\n{gallery}\n\n{body}" if shown else f"{head}\n\n{body}"


def run_apply(model: str, input: str, output: str, config: ApplyConfig, workspace: str | None = None,
              runner: str | None = None) -> dict:
    return apply(model, input, output, workspace, config, runner)


if __name__ == "__main__":
    import sys

    print(apply(sys.argv[1], sys.argv[2], sys.argv[3]))
