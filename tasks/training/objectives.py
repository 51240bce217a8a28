"""Objectives: what one model task brings to the training loop and to evaluation.

The loop (tasks/training/loop.py) owns the schedule, AMP, clipping, budget, validation cadence, checkpoints
and resume; an objective owns everything about *what* is learned:

    build_model()                      the model, from `model_config()` (the factory's config dict)
    setup(model, device)               the loss and any extra networks (a GAN's critic), on the device
    datasets(cache_dir)                (train, validation) torch data sets
    training_step(model, batch, amp)   -> (loss for the model's optimizer or None, logs)
    new_metrics() / validation_step()  metric accumulators and how one batch feeds them
    state_dict() / load_state_dict()   extra state the checkpoint must carry
    registry_config() / registry_metadata()    what the registry stores with the weights
    evaluate_split(...)                per-image rows, means, gallery of a registered model on a split
    score_key, baseline                which metric decides promotion; what the model is compared with

A new model task is one class here (or its own module), a predictor (tasks/inference/predictors.py), the
fields its model card needs, and one line in tasks/core/model_tasks.py, which OBJECTIVES is built from; plus a
CLI subcommand to train it.
"""

from __future__ import annotations

import torch

from pixelmill.models.factory import build_model
from pixelmill.models.losses import FeatureWeightsMissing, build_loss
from pixelmill.models.unet import residual_base
from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import ConfigError, PixelmillError
from pixelmill.tasks.core.model_tasks import MODEL_TASKS, import_path
from pixelmill.tasks.training.config import TrainConfig
from pixelmill.tasks.training.datasets import PairDataset, PairRecord, infer_scale, load_pairs
from pixelmill.tasks.training.evaluate import Evaluation, evaluate_pairs, mean_scores
from pixelmill.tasks.training.metrics import PSNR_CAP, Mean, MetricSet, psnr_torch

MIN_TRAIN_PAIRS = 2


class RestorationObjective:
    """Image to image: super-resolution (scale from the pairs), de-JPEG, de-watermark, denoise.

    The net learns a correction to the bicubic-upscaled input (residual=True) unless arch_kwargs says
    otherwise; validation reports the loss and Y-PSNR of the model and of the baseline.
    """

    name = "restoration"
    in_channels = 3
    score_key = "psnr_y"  # promotion: higher wins
    gallery_labels = ("input", "baseline", "model", "target")

    def __init__(self, cfg: TrainConfig, workspace: str, source: str):
        self.cfg, self.workspace, self.source = cfg, workspace, source
        catalog = Catalog(workspace)
        self.train_records, self.bad_train = load_pairs(catalog, source, "train")
        self.val_records, self.bad_val = load_pairs(catalog, source, "valid")
        if len(self.train_records) < MIN_TRAIN_PAIRS:
            raise PixelmillError(f"paired set {source!r} has {len(self.train_records)} usable train pairs in "
                                 f"{catalog.workspace}", f"need at least {MIN_TRAIN_PAIRS}: run `pixelmill crappify` "
                                 "on a larger data set, or check --pairs and --workspace")
        self.validates_on_train = not self.val_records
        if self.validates_on_train:
            self.val_records = self.train_records
        self.scale = infer_scale(self.train_records)
        self.loss_fn: torch.nn.Module | None = None

    @property
    def baseline(self) -> str:
        return "bicubic" if self.scale > 1 else "input"

    def describe(self) -> str:
        return (f"{self.source}: {len(self.train_records)} train pairs ({self.bad_train} skipped: error rows, "
                "sources changed since crappify), "
                f"{len(self.val_records)} valid ({self.bad_val} skipped), scale x{self.scale}"
                + (" - no valid split: validating on train pairs, scores will be optimistic"
                   if self.validates_on_train else ""))

    # model and loss
    def model_config(self) -> dict:
        return {"arch": self.cfg.arch, "in_channels": self.in_channels, "out_channels": 3, "scale": self.scale,
                "residual": True, **self.cfg.arch_kwargs}

    def build_model(self) -> torch.nn.Module:
        return build_model(self.model_config())

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        loss = self.cfg.loss or "l1"
        if loss == "cross_entropy":
            raise ConfigError("cross_entropy is a segmentation loss", "use l1, charbonnier, ssim, l1+ssim or feature")
        kwargs = {"weights": self.cfg.feature_weights} if loss == "feature" else {}
        try:
            self.loss_fn = build_loss(loss, **kwargs).to(device)
        except FeatureWeightsMissing as exc:
            raise ConfigError(str(exc), "or train with --loss l1 (no pretrained network needed)") from None

    # data
    def datasets(self, cache_dir: str | None) -> tuple[PairDataset, PairDataset]:
        common = {"scale": self.scale, "in_channels": self.in_channels, "cache_dir": cache_dir}
        return (PairDataset(self.train_records, crop=self.cfg.crop, train=True, seed=self.cfg.seed, **common),
                PairDataset(self.val_records[: self.cfg.val_images], crop=self.cfg.val_crop, train=False, **common))

    # one step, one validation batch
    def training_step(self, model, batch, amp) -> tuple[torch.Tensor, dict]:
        x, y = batch
        with amp.autocast():
            pred = model(x)
        return self.loss_fn(pred.float(), y), {}

    def new_metrics(self) -> MetricSet:
        return MetricSet(val_loss=Mean(), val_psnr_y=Mean(cap=PSNR_CAP), val_psnr_y_baseline=Mean(cap=PSNR_CAP))

    def validation_step(self, model, batch, metrics: MetricSet) -> None:
        x, y = batch
        pred = model(x).float().clamp(0, 1)
        base = residual_base(x.float(), self.scale, 3).clamp(0, 1)
        border = self.scale if self.scale > 1 else 0
        metrics.update(val_loss=[float(self.loss_fn(pred, y))] * x.shape[0],
                       val_psnr_y=psnr_torch(pred, y, crop_border=border),
                       val_psnr_y_baseline=psnr_torch(base, y, crop_border=border))

    # extra checkpoint state: none
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # registry
    def registry_config(self) -> dict:
        return {"task": self.name, "scale": self.scale, "input_range": [0, 1], "in_channels": self.in_channels}

    def registry_metadata(self) -> dict:
        hashes = Catalog(self.workspace).read("pairs", self.source, columns=["recipe_hash"])["recipe_hash"]
        return {"pairs_set": self.source, "recipe_hash": ",".join(sorted(h for h in set(hashes.to_pylist()) if h)),
                "train_pairs": len(self.train_records), "valid_pairs": len(self.val_records)}

    # evaluation of a registered model
    @classmethod
    def evaluate_split(cls, model, card: ModelCard, workspace: str, source: str, split: str, device: torch.device,
                       keep_images: int = 0, limit: int | None = None) -> Evaluation:
        records, skipped = load_pairs(Catalog(workspace), source, split)
        records = records[:limit] if limit else records
        if not records:
            raise PixelmillError(f"no ok pairs in set {source!r}, split {split!r}", "check --pairs and --split")
        scale = infer_scale(records)
        if scale != card.scale:
            raise PixelmillError(f"the model is a x{card.scale} model but {source!r} holds x{scale} pairs",
                                 "evaluate it on a paired set made with a matching recipe")
        rows, gallery, captions = evaluate_pairs(model, records, scale, card.in_channels, device,
                                                 keep_images)
        means = {m: mean_scores(rows, m) for m in ("model", "baseline")}
        return Evaluation(rows, means, len(records), skipped, "bicubic" if scale > 1 else "input", gallery,
                          gallery_captions=captions)


class ColorizeObjective(RestorationObjective):
    """Grey in, colour out: the restoration objective with a one-channel input."""

    name = "colorize"
    in_channels = 1
    # The baseline (the grey input) already carries the target's luma, so Y-PSNR (~60 dB) can never be beaten:
    # colour is what a colorizer adds, and RGB PSNR measures it.
    score_key = "psnr_rgb"


# by tasks/core/model_tasks.py's table, which also names each task's predictor
OBJECTIVES: dict[str, type] = {name: import_path(task.objective) for name, task in MODEL_TASKS.items()}


def objective_class(task: str) -> type:
    if task not in OBJECTIVES:
        raise ConfigError(f"unknown model task {task!r}", f"valid tasks: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[task]


def build_objective(cfg: TrainConfig, workspace: str, source: str):
    """The objective for cfg.task on `source`; cfg.gan wraps it in the GAN fine-tuning stage."""
    if cfg.gan and cfg.task == "segmentation":
        raise ConfigError("GAN fine-tuning is for image outputs (restoration, colorize)",
                          "remove `gan:` from the config")
    objective = objective_class(cfg.task)(cfg, workspace, source)
    if cfg.gan:
        from pixelmill.tasks.training.gan import GanObjective

        return GanObjective(objective, cfg.gan, workspace)
    return objective


__all__ = ["OBJECTIVES", "ColorizeObjective", "Evaluation", "PairRecord", "RestorationObjective", "build_objective",
           "objective_class"]
