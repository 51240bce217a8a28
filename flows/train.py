"""Train flow: a paired set -> a new model version in the registry, watched in the Prefect UI.

    pixelmill train restoration --pairs photos-sr-x2 --name sr2 --max-minutes 20
    pixelmill train restoration --pairs photos-sr-x2 --name sr2 --resume       # after a crash
    pixelmill train segmentation --dataset camvid --classes camvid --name seg --max-minutes 15

The flow knows no model task: the config's `task` picks the objective inside the training task.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pixelmill.tasks import steps
from pixelmill.tasks.core import storage
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.names import check_name
from pixelmill.tasks.core.reports import artifact_key, evaluation_gallery, round_values
from pixelmill.tasks.training.config import TrainConfig

GALLERY_IMAGES = 3


@flow(name="train", flow_run_name="train-{name}")
def train(source: str, name: str, config: TrainConfig | None = None, workspace: str | None = None,
          resume: bool = False) -> dict:
    """Train a U-Net on a set's train split, validate on its valid split, register it as NAME:vN.

    `source` is what the config's task learns from: a paired set (restoration, colorize) or an ingested
    data set with masks (segmentation)."""
    config = config or TrainConfig()
    layout = Layout.of(workspace)
    check_name(name, "model name")
    if resume and not storage.exists(layout.checkpoint(name)):
        raise PixelmillError(f"no checkpoint to resume for model {name!r} at {layout.checkpoint(name)}",
                             "run without --resume")

    summary = steps.train_model(layout.root, source, name, config, resume)
    if summary["history"]:
        create_table_artifact([round_values(h) for h in summary["history"]], key=artifact_key("train", name),
                              description=f"{summary['model']}: losses and validation per {config.val_every} steps")
    shown = steps.evaluate_model(layout.root, summary["model"], source, "valid", gallery=GALLERY_IMAGES,
                                 limit=GALLERY_IMAGES, record=False)
    last = summary["metrics"]
    create_markdown_artifact(
        f"## trained {summary['model']}\n\n{config.arch} ({summary['task']}) on `{source}`: {summary['steps']} steps "
        f"in {summary['seconds']:.0f} s ({summary['images_per_s']:.1f} images/s).\n\nlast validation: "
        + ", ".join(f"{k} {v}" for k, v in round_values(last).items())
        + f"\n\nweights: `{summary['uri']}`\n\n**validation images**\n\n"
        + evaluation_gallery(shown),
        key=artifact_key("model", name), description=f"{summary['model']} trained on {source}")
    return {k: v for k, v in summary.items() if k != "history"}
