"""Crappify flow: the ok images of a data set -> a paired training set and its `pairs` catalog table.

    pixelmill crappify --dataset photos --recipe lesson7
    pixelmill crappify --dataset photos --recipe sr-x4 --split train --runner dask       # LocalCluster
    pixelmill crappify --dataset photos --recipe my-recipe.yaml --runner tcp://scheduler:8786
"""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from pixelmill.flows.stages import Stage, StageRun, run_stage
from pixelmill.tasks import steps
from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.pairs import HrRef, load_hr
from pixelmill.tasks.core.reports import pair_gallery, png_bytes
from pixelmill.tasks.core.settings import workspace_url
from pixelmill.tasks.core.tables import TABLES
from pixelmill.tasks.prep.crappify import CrappifyConfig, CrappifyPlan, start_pool

GALLERY_PAIRS = 4


def run_name() -> str:
    """`crappify-{dataset}-{recipe}`, the recipe as its name or its file's stem."""
    params = flow_run.parameters
    config = params.get("config") or {}
    recipe = (config.get("recipe") if isinstance(config, dict) else config.recipe) or "lesson7"
    return f"crappify-{params['dataset']}-{PurePosixPath(recipe).stem}"


def describe(plan: CrappifyPlan) -> str:
    return (f"{plan.set_name}: recipe {plan.recipe.name} ({plan.recipe.recipe_hash}), "
            f"{sum(len(s.jobs) for s in plan.shards)} pairs to make in {len(plan.shards)} shards, "
            f"{plan.existing} already made")


def summarize(run: StageRun) -> tuple[dict, str]:
    pairs = TABLES["pairs"]
    plan: CrappifyPlan = run.plan
    table = Catalog(run.workspace).read("pairs", run.group)
    made = sum(len(s.jobs) for s in plan.shards)
    summary = pairs.summary(table) | {"set_name": run.group, "recipe_hash": plan.recipe.recipe_hash,
                                      "made": made, "existing": plan.existing, "workspace": run.workspace}
    ok = [r for r in table.to_pylist() if r["status"] == "ok"][:GALLERY_PAIRS]
    # the HR as training reads it: a referenced source decoded and cropped, not its raw file
    gallery = pair_gallery([(storage.read_bytes(r["lr_uri"]), png_bytes(np.asarray(load_hr(HrRef.of(r)))))
                            for r in ok])
    markdown = (pairs.markdown(summary, f"crappify {run.group}")
                + f"\n\n{made} made now, {plan.existing} already there.\n\n**before / after**\n\n{gallery}")
    return summary, markdown


CRAPPIFY = Stage(
    name="crappify", table="pairs", plan=steps.plan_crappify, run_shard=steps.crappify_shard,
    group=lambda plan: plan.set_name, shards=lambda plan: plan.shards, items=lambda shard: len(shard.jobs),
    describe=describe, summary=summarize,
    outputs=lambda workspace, plan: [Layout.of(workspace).paired_set(plan.set_name)],
    pool=start_pool,
    shards_per_worker=2,  # one running, one queued for when it ends
)


# The stage bounds the shards in flight itself and switches to `runner` for them (flows/runners.py).
@flow(name="crappify", flow_run_name=run_name, task_runner=ThreadPoolTaskRunner())
def crappify(dataset: str, config: CrappifyConfig | None = None, workspace: str | None = None,
             runner: str | None = None) -> dict:
    """Make (HR target, LR input) pairs with a named degradation recipe; reruns only make missing pairs.
    `runner`: threads (with a local process pool), processes, dask, dask:PROFILE or a Dask scheduler address
    (default: $PIXELMILL_RUNNER, else threads)."""
    config = config or CrappifyConfig()
    workspace = workspace_url(workspace)
    return run_stage(CRAPPIFY, workspace, config.workers, plan=dict(workspace=workspace, dataset=dataset, cfg=config),
                     shard=dict(cfg=config), runner=runner)


def run_crappify(dataset: str, config: CrappifyConfig, workspace: str | None = None,
                 runner: str | None = None) -> dict:
    return crappify(dataset, config, workspace, runner)


if __name__ == "__main__":
    import sys

    print(run_crappify(sys.argv[1], CrappifyConfig(recipe=sys.argv[2] if len(sys.argv) > 2 else "lesson7")))
