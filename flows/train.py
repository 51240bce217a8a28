"""Train flow: a paired set -> a new model version in the registry, watched in the Prefect UI.

    pixelmill train restoration --pairs photos-sr-x2 --name sr2 --max-minutes 20
    pixelmill train restoration --pairs photos-sr-x2 --name sr2 --resume       # after a crash
"""

from __future__ import annotations

import os
import tempfile

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import registry, steps, storage
from tasks.catalog import Catalog, check_name
from tasks.data import infer_scale, load_pairs
from tasks.errors import PixelmillError
from tasks.reports import gallery_markdown, png_bytes
from tasks.settings import workspace_url
from tasks.train import TrainConfig, model_config_for

MIN_TRAIN_PAIRS = 2
GALLERY_IMAGES = 3


def checkpoint_uri(workspace: str, name: str) -> str:
    return storage.join(registry.models_root(workspace), name, "checkpoints", "last.pt")


def pretrained_generator(workspace: str, config: TrainConfig, scale: int) -> dict:
    """The GAN stage starts from a registered model of the same architecture."""
    mv = registry.resolve(workspace, config.gan.init_from)
    model, model_config, _ = registry.load(mv)
    saved = model_config["model"]
    differs = {k: (saved.get(k), v) for k, v in model_config_for(config, scale).items() if saved.get(k) != v}
    if differs:
        raise PixelmillError(f"{mv.ref} does not match the GAN stage's model: {differs} (saved, asked)",
                             "give the GAN stage the pretrained model's --arch and arch_kwargs")
    return model.state_dict()


@flow(name="train")
def train(pairs: str, name: str, config: TrainConfig | None = None, workspace: str | None = None,
          resume: bool = False) -> dict:
    """Train a restoration U-Net on a paired set's train split, validate on its valid split, register it."""
    logger = get_run_logger()
    config = config or TrainConfig()
    workspace = workspace_url(workspace)
    catalog = Catalog(workspace)
    check_name(name, "model name")

    train_records, bad_train = load_pairs(catalog, pairs, "train")
    val_records, bad_val = load_pairs(catalog, pairs, "valid")
    if len(train_records) < MIN_TRAIN_PAIRS:
        raise PixelmillError(f"paired set {pairs!r} has {len(train_records)} usable train pairs in {workspace}",
                             f"need at least {MIN_TRAIN_PAIRS}: run `pixelmill crappify` on a larger data set, "
                             "or check --pairs and --workspace")
    if not val_records:
        logger.warning("no valid split in %s: validating on train pairs (scores will be optimistic)", pairs)
        val_records = train_records
    scale = infer_scale(train_records)
    ckpt = checkpoint_uri(workspace, name)
    if resume and not storage.exists(ckpt):
        raise PixelmillError(f"no checkpoint to resume for model {name!r} at {ckpt}", "run without --resume")
    logger.info("%s: %d train pairs (%d error rows skipped), %d valid (%d skipped), scale x%d", pairs,
                len(train_records), bad_train, len(val_records), bad_val, scale)

    init_weights = pretrained_generator(workspace, config, scale) if config.gan else None
    remote = not storage.normalize_url(workspace).startswith("file://")
    cache_dir = os.path.join(tempfile.gettempdir(), "pixelmill-cache", pairs) if remote else None
    result = steps.train_model(config, train_records, val_records, scale, ckpt, resume, cache_dir, init_weights)

    recipe_hashes = set(catalog.read("pairs", pairs, columns=["recipe_hash"])["recipe_hash"].to_pylist())
    last = result.history[-1] if result.history else {}
    mv = registry.save(
        workspace, name, result.model,
        config={"task": config.task, "scale": scale, "input_range": [0, 1],
                "in_channels": 1 if config.task == "colorize" else 3, "train_config": config.model_dump(mode="json")},
        metadata={"pairs_set": pairs, "recipe_hash": ",".join(sorted(h for h in recipe_hashes if h)),
                  "steps": result.step, "seconds": round(result.seconds, 1), "metrics": last,
                  "train_pairs": len(train_records), "valid_pairs": len(val_records)})
    if result.history:
        create_table_artifact(result.history, key=f"train-{name}".lower().replace("_", "-").replace(".", "-"),
                              description=f"{mv.ref}: losses and validation per {config.val_every} steps")
    _, gallery = steps.evaluate_model(workspace, mv.ref, val_records[:GALLERY_IMAGES], scale, GALLERY_IMAGES)
    create_markdown_artifact(
        f"## trained {mv.ref}\n\n{config.arch} x{scale} on `{pairs}`: {result.step} steps in {result.seconds:.0f} s "
        f"({result.images_per_s:.1f} images/s).\n\nlast validation: "
        + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items())
        + f"\n\nweights: `{mv.uri}`\n\n**validation images**\n\n"
        + gallery_markdown(["input", "baseline", "model", "target"], [[png_bytes(a) for a in g] for g in gallery]),
        key=f"model-{name}".lower().replace("_", "-").replace(".", "-"))
    return {"model": mv.ref, "uri": mv.uri, "steps": result.step, "seconds": result.seconds,
            "images_per_s": result.images_per_s, "scale": scale, "metrics": last}
