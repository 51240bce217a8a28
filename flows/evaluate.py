"""Evaluate flow: a model version against the baseline on a pairs split; optionally promote it.

    pixelmill evaluate sr2 --pairs photos-sr-x2 --split valid
    pixelmill evaluate sr2:v3 --pairs photos-sr-x2 --promote production
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks import registry, steps
from tasks.catalog import Catalog
from tasks.data import infer_scale, load_pairs
from tasks.errors import PixelmillError
from tasks.evaluate import mean_scores
from tasks.reports import gallery_markdown, markdown_table, png_bytes
from tasks.settings import workspace_url


@flow(name="evaluate")
def evaluate(model: str, pairs: str, split: str = "valid", promote: str | None = None,
             workspace: str | None = None) -> dict:
    """PSNR/SSIM (Y and RGB) of model and baseline per image; `promote` moves an alias only on a win."""
    logger = get_run_logger()
    workspace = workspace_url(workspace)
    catalog = Catalog(workspace)
    mv = registry.resolve(workspace, model)
    config = registry.read_json(mv, "config.json")
    records, skipped = load_pairs(catalog, pairs, split)
    if not records:
        raise PixelmillError(f"no ok pairs in set {pairs!r}, split {split!r}", "check --pairs and --split")
    scale = infer_scale(records)
    if scale != config["scale"]:
        raise PixelmillError(f"{mv.ref} is a x{config['scale']} model but {pairs!r} holds x{scale} pairs",
                             "evaluate it on a paired set made with a matching recipe")

    rows, gallery = steps.evaluate_model(workspace, mv.ref, records, scale)
    model_mean, base_mean = mean_scores(rows, "model"), mean_scores(rows, "baseline")
    evaluation_id = hashlib.sha256(f"{mv.ref}|{pairs}|{split}".encode()).hexdigest()[:16]
    now = datetime.now(UTC)
    common = {"evaluation_id": evaluation_id, "model": mv.ref, "pairs_set": pairs, "split": split, "created_at": now}
    table_rows = [common | r | {"scope": "image", "images": 1} for r in rows]
    table_rows += [common | m | {"method": method, "scope": "mean"}
                   for method, m in (("model", model_mean), ("baseline", base_mean))]
    catalog.write_part("evaluations", mv.name, evaluation_id, table_rows)

    summary = {"model": mv.ref, "pairs": pairs, "split": split, "images": len(records), "skipped": skipped,
               "model_scores": model_mean, "baseline_scores": base_mean,
               "gain_psnr_y": model_mean["psnr_y"] - base_mean["psnr_y"], "promoted": None}
    if promote:
        summary |= decide_promotion(workspace, mv, promote, records, scale, model_mean, base_mean)
        logger.info("promotion to %s: %s", promote, summary["promotion_reason"])

    keys = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
    report = [f"## evaluate {mv.ref} on `{pairs}` ({split}, {len(records)} images, {skipped} error pairs skipped)",
              markdown_table(["method", *keys], [[name, *(f"{m[k]:.4f}" for k in keys)] for name, m in
                                                 (("model", model_mean), ("baseline", base_mean))]),
              f"gain over the baseline: {summary['gain_psnr_y']:+.2f} dB (Y-PSNR)"]
    if promote:
        report.append(f"promotion to `{promote}`: {summary['promotion_reason']}")
    report.append(gallery_markdown(["input", "baseline", "model", "target"],
                                   [[png_bytes(a) for a in images] for images in gallery], height=128))
    create_markdown_artifact("\n\n".join(report), key=f"evaluate-{mv.name}".lower().replace("_", "-").replace(".", "-"),
                             description=f"{mv.ref} on {pairs}/{split}")
    return summary


def decide_promotion(workspace: str, mv: registry.ModelVersion, alias: str, records: list, scale: int,
                     model_mean: dict, base_mean: dict) -> dict:
    """Move the alias only if the model beats the baseline and the alias's current model on the same data."""
    if model_mean["psnr_y"] <= base_mean["psnr_y"]:
        return {"promoted": False, "promotion_reason": f"not promoted: {model_mean['psnr_y']:.2f} dB does not "
                                                      f"beat the baseline's {base_mean['psnr_y']:.2f} dB"}
    current = registry.aliases(workspace, mv.name).get(alias)
    if current and current != mv.version:
        current_rows, _ = steps.evaluate_model(workspace, f"{mv.name}:{current}", records, scale)
        current_mean = mean_scores(current_rows, "model")
        if model_mean["psnr_y"] <= current_mean["psnr_y"]:
            return {"promoted": False, "promotion_reason": f"not promoted: {mv.name}:{current} ({alias}) scores "
                                                          f"{current_mean['psnr_y']:.2f} dB, this one "
                                                          f"{model_mean['psnr_y']:.2f} dB"}
    registry.set_alias(workspace, mv, alias)
    return {"promoted": True, "promotion_reason": f"promoted: {mv.ref} is now {mv.name}@{alias} "
                                                  f"({model_mean['psnr_y']:.2f} dB vs baseline "
                                                  f"{base_mean['psnr_y']:.2f} dB, previous {current or 'none'})"}
