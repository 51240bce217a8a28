"""Crappify flow: the ok images of a data set -> a paired training set and its `pairs` catalog table.

    pixelmill crappify --dataset photos --recipe lesson7
    pixelmill crappify --dataset photos --recipe sr-x4 --split train --dask              # LocalCluster
    pixelmill crappify --dataset photos --recipe my-recipe.yaml --dask tcp://scheduler:8786
"""

from __future__ import annotations

import functools
from pathlib import PurePosixPath

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from pixelmill.flows.console import report_progress
from pixelmill.flows.runners import api_for_workers, in_window, task_runner_for
from pixelmill.tasks import steps
from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.reports import artifact_key, pair_gallery, pairs_markdown, pairs_summary
from pixelmill.tasks.core.settings import workspace_url
from pixelmill.tasks.prep.crappify import CrappifyConfig, start_pool

GALLERY_PAIRS = 4


def shards_in_flight(workers: int) -> int:
    return 2 * workers


def run_name() -> str:
    """`crappify-{dataset}-{recipe}`, the recipe as its name or its file's stem."""
    params = flow_run.parameters
    config = params.get("config") or {}
    recipe = (config.get("recipe") if isinstance(config, dict) else config.recipe) or "lesson7"
    return f"crappify-{params['dataset']}-{PurePosixPath(recipe).stem}"


# The flow bounds the shards in flight itself (`in_window`), so a deployment's run needs no runner settings.
@flow(name="crappify", flow_run_name=run_name, task_runner=ThreadPoolTaskRunner())
def crappify(dataset: str, config: CrappifyConfig | None = None, workspace: str | None = None) -> dict:
    """Make (HR target, LR input) pairs with a named degradation recipe; reruns only make missing pairs."""
    logger = get_run_logger()
    config = config or CrappifyConfig()
    workspace = workspace_url(workspace)
    # On threads, each shard runs whole in a child of one local process pool of `workers`, started now so that
    # its start overlaps the planning; on Dask, the workers are the processes.
    on_threads = isinstance(FlowRunContext.get().task_runner, ThreadPoolTaskRunner)
    processes = config.workers if on_threads else 0
    if processes and not workspace.startswith("memory://"):
        start_pool(processes)

    plan = steps.plan_crappify(workspace, dataset, config)
    steps.watch_run("crappify", plan.set_name, workspace)  # before any work: a run killed with -9 is marked by the next
    todo = sum(len(s.jobs) for s in plan.shards)
    logger.info("%s: recipe %s (%s), %d pairs to make in %d shards, %d already made", plan.set_name,
                plan.recipe.name, plan.recipe.recipe_hash, todo, len(plan.shards), plan.existing)

    progress = create_progress_artifact(0.0, key=artifact_key("crappify-progress", plan.set_name),
                                        description=f"crappify {plan.set_name}: shards done")
    # Two shards per worker in flight: one running, one queued for when it ends.
    submit = functools.partial(steps.crappify_shard.submit, workspace=workspace, cfg=config, processes=processes)
    for done, future in enumerate(in_window(submit, plan.shards, shards_in_flight(config.workers)), start=1):
        future.result()
        update_progress_artifact(progress, 100.0 * done / len(plan.shards))
        report_progress(f"crappify {plan.set_name}: shards", done, len(plan.shards))
    if not plan.shards:
        update_progress_artifact(progress, 100.0)

    removed = steps.compact_catalog(workspace, "pairs", plan.set_name)  # also repairs older runs' duplicates
    if removed:
        logger.info("%s: removed %d duplicate pair rows left by overlapping or earlier runs", plan.set_name, removed)
    table = Catalog(workspace).read("pairs", plan.set_name)
    summary = pairs_summary(table) | {"set_name": plan.set_name, "recipe_hash": plan.recipe.recipe_hash,
                                      "made": todo, "existing": plan.existing, "workspace": workspace}
    ok = [r for r in table.to_pylist() if r["status"] == "ok"][:GALLERY_PAIRS]
    gallery = pair_gallery([(storage.read_bytes(r["lr_uri"]), storage.read_bytes(r["hr_uri"])) for r in ok])
    create_markdown_artifact(
        pairs_markdown(summary, f"crappify {plan.set_name}")
        + f"\n\n{todo} made now, {plan.existing} already there.\n\n**before / after**\n\n{gallery}",
        key=artifact_key("crappify", plan.set_name),
        description=f"paired set {plan.set_name} ({plan.recipe.name})")
    return summary


def run_crappify(dataset: str, config: CrappifyConfig, workspace: str | None = None,
                 dask: str | None = None) -> dict:
    """Run the flow on the chosen task runner (a runner is fixed per flow call, so it is chosen here)."""
    runner = task_runner_for(dask, config.workers, workspace_url(workspace), shards_in_flight(config.workers))
    with api_for_workers(dask):
        return crappify.with_options(task_runner=runner)(dataset, config, workspace)


if __name__ == "__main__":
    import sys

    print(run_crappify(sys.argv[1], CrappifyConfig(recipe=sys.argv[2] if len(sys.argv) > 2 else "lesson7")))
