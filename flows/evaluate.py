"""Evaluate flow: a model version against its baseline on a split; optionally promote it.

    pixelmill evaluate sr2 --pairs photos-sr-x2 --split valid
    pixelmill evaluate sr2:v3 --pairs photos-sr-x2 --promote production
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from pixelmill.flows.events import emit_promoted
from pixelmill.tasks import steps
from pixelmill.tasks.core import registry
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.reports import artifact_key, evaluation_gallery, markdown_table

GALLERY_IMAGES = 3


@flow(name="evaluate", flow_run_name="evaluate-{model}-{source}-{split}")
def evaluate(model: str, source: str, split: str = "valid", promote: str | None = None,
             workspace: str | None = None, tta: bool = False) -> dict:
    """Scores of model and baseline per image and on average; `promote` moves an alias only on a win.

    `source`: the paired set (restoration) or data set with masks (segmentation) to score on. `tta` scores the
    geometric self-ensemble (8 forwards an image), the current alias's model too when promoting."""
    logger = get_run_logger()
    layout = Layout.of(workspace)
    card = registry.resolve(layout.root, model)  # an unknown reference fails here, before any work
    # What the alias points at as scoring begins: the move below is a compare-and-swap from this version, so a
    # promotion made meanwhile by another run is never silently overwritten (this one is refused instead).
    current = registry.aliases(layout.root, card.name).get(promote) if promote else None
    result = steps.evaluate_model(layout.root, card.ref, source, split, gallery=GALLERY_IMAGES, tta=tta)
    key = result["score_key"]
    model_mean, base_mean = result["means"]["model"], result["means"]["baseline"]
    summary = {"model": card.ref, "source": source, "split": split, "images": result["images"],
               "skipped": result["skipped"], "baseline": result["baseline"], "score_key": key,
               "model_scores": model_mean, "baseline_scores": base_mean,
               "gain": model_mean[key] - base_mean[key], "promoted": None, "tta": tta}
    if key == "psnr_y":
        summary["gain_psnr_y"] = summary["gain"]
    if promote:
        current_mean = None
        if current and current != card.version:  # re-scored on the same data in this run, never a stale number
            current_mean = steps.evaluate_model(layout.root, f"{card.name}:{current}", source, split,
                                                tta=tta)["means"]["model"]
        promoted, reason = registry.decide_promotion(card.ref, f"{card.name}@{promote}", key, model_mean, base_mean,
                                            current_mean, current)
        if promoted:
            try:
                registry.set_alias(layout.root, card, promote, reason=reason, expected=current)
            except registry.AliasMoved as exc:
                promoted, reason = False, f"not promoted: another promotion won the race: {exc.message}"
            else:
                emit_promoted(card, promote, layout.root, previous=current)
        summary |= {"promoted": promoted, "promotion_reason": reason}
        logger.info("promotion to %s: %s", promote, reason)

    metrics = [k for k in model_mean if k != "images"]
    report = [f"## evaluate {card.ref} on `{source}` ({split}, {result['images']} images, "
              f"{result['skipped']} skipped)",
              markdown_table(["method", *metrics], [[name, *(f"{m[k]:.4g}" for k in metrics)] for name, m in
                                                    ((f"model {card.ref}", model_mean),
                                                     (f"baseline ({result['baseline']})", base_mean))]),
              f"gain over the baseline: {summary['gain']:+.4g} ({key})"]
    if promote:
        report.append(f"promotion to `{promote}`: {summary['promotion_reason']}")
    if result["report"]:
        report.append(result["report"])
    report.append(evaluation_gallery(result))
    create_markdown_artifact("\n\n".join(report), key=artifact_key("evaluate", card.name),
                             description=f"{card.ref} on {source}/{split}")
    return summary

