"""Bulk apply without Prefect: a registered model over a folder, bucket, archive or data set -> outputs + rows.

The parts, one idea each:

    plan.py        ApplyConfig; list the inputs, skip what this model version did, cut shards (carrying the card)
    runtime.py     the model loaded once per process by card, its device, tile and batch sizes, its forward
    predictors.py  per model task: prepare an input, finish the model's output, encode the files
    outputs.py     output names, image encoding and transparency, `predictions` rows
    pipeline.py    readers -> tiled batches -> writers over any predictor (apply_shard), or one file
                   (predict_file, for `enhance` and `segment`)

This module keeps the names the flows, the CLI and scripts import (torch-free: torch comes with the
pipeline, when a shard runs), and runs a whole apply in one process.
"""

from __future__ import annotations

from pixelmill.tasks.core import registry
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.inference.plan import ApplyConfig, ApplyPlan, ApplyShard, parse_bytes, plan_apply

__all__ = ["ApplyConfig", "ApplyPlan", "ApplyShard", "apply_local", "parse_bytes", "plan_apply"]


def apply_local(workspace: str, model_ref: str, source: str, output: str, cfg: ApplyConfig,
                run_id: str = "") -> ApplyPlan:
    """The whole apply without Prefect: plan, every shard, compact. For tests, benchmarks and scripts."""
    from pixelmill.tasks.inference.pipeline import apply_shard

    cfg = cfg.check()
    catalog = Catalog(workspace)
    card = registry.resolve(workspace, model_ref)
    plan = plan_apply(catalog, card, source, output, cfg)
    for shard in plan.shards:
        apply_shard(shard, workspace, cfg, run_id)
    catalog.compact("predictions", card.name)
    return plan
