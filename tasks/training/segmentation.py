"""The segmentation objective: image -> per-pixel class, CamVid-style, on the one training loop.

Data comes straight from the images table (ok rows of a data set ingested with `--masks`), no crappify.
Loss: cross-entropy with the class map's ignore index, optional median-frequency class weights (SegNet),
optional Dice and focal terms. Validation and evaluation fill confusion matrices (model and the
majority-class baseline) and report mean IoU, global pixel accuracy and mean class accuracy, all without
the ignore class. Promotion compares mean IoU.
"""

from __future__ import annotations

import numpy as np
import torch

from pixelmill.models.device import to_uint8
from pixelmill.models.factory import build_model
from pixelmill.models.losses import SegmentationLoss
from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.classes import ClassMap, load_class_map, overlay
from pixelmill.tasks.core.errors import ConfigError, PixelmillError
from pixelmill.tasks.core.reports import markdown_table
from pixelmill.tasks.training.config import TrainConfig
from pixelmill.tasks.training.evaluate import Evaluation
from pixelmill.tasks.training.metrics import ConfusionMatrix, Mean, MetricSet
from pixelmill.tasks.training.segdata import (
    SegmentationDataset,
    load_segmentation_records,
    median_frequency_weights,
    pixel_counts,
)

MIN_TRAIN_IMAGES = 2
CONFUSION_SHOWN = 16  # classes beyond this make the report's matrix unreadable; the catalog keeps them all


class SegmentationObjective:
    name = "segmentation"
    score_key = "miou"
    baseline = "majority class"
    gallery_labels = ("image", "ground truth", "prediction")

    def __init__(self, cfg: TrainConfig, workspace: str, source: str):
        if cfg.loss not in (None, "cross_entropy"):
            raise ConfigError(f"loss {cfg.loss!r} is a restoration loss",
                              "segmentation trains with cross_entropy (plus dice_weight / focal_gamma)")
        self.cfg, self.workspace, self.source = cfg, workspace, source
        self.classes: ClassMap = load_class_map(cfg.classes or "camvid")
        catalog = Catalog(workspace)
        self.train_records, self.skipped_train = load_segmentation_records(catalog, source, "train")
        self.val_records, self.skipped_val = load_segmentation_records(catalog, source, "valid")
        if len(self.train_records) < MIN_TRAIN_IMAGES:
            raise PixelmillError(f"data set {source!r} has {len(self.train_records)} train images with masks in "
                                 f"{catalog.workspace}", f"need at least {MIN_TRAIN_IMAGES}: ingest images with "
                                 "--masks, and check --dataset and --workspace")
        self.validates_on_train = not self.val_records
        if self.validates_on_train:
            self.val_records = self.train_records
        counts = pixel_counts(self.train_records, self.classes)
        self.majority = int(np.argmax(counts))  # the baseline's one answer for every pixel
        self.class_weights = (median_frequency_weights(self.train_records, self.classes)
                              if cfg.class_weights == "median_frequency" else None)
        self.loss_fn: torch.nn.Module | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes.names)

    def describe(self) -> str:
        return (f"{self.source}: {len(self.train_records)} train images ({self.skipped_train} without a usable mask "
                f"skipped), {len(self.val_records)} valid, {self.num_classes} classes "
                f"({self.classes.names[self.majority]} is the majority)"
                + (" - no valid split: validating on train images" if self.validates_on_train else ""))

    # model and loss
    def model_config(self) -> dict:
        return {"arch": self.cfg.arch, "in_channels": 3, "out_channels": self.num_classes, "scale": 1,
                "residual": False, **self.cfg.arch_kwargs}

    def build_model(self) -> torch.nn.Module:
        return build_model(self.model_config())

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        weight = torch.tensor(self.class_weights, dtype=torch.float32) if self.class_weights else None
        self.loss_fn = SegmentationLoss(weight=weight, ignore_index=self.classes.ignore_index,
                                        dice=self.cfg.dice_weight, focal_gamma=self.cfg.focal_gamma).to(device)

    @property
    def train_scale(self) -> float:
        """The resolution training crops are made at: the model's own (input_scale) when the loss is computed
        there, so the model skips its input resize and the loss sees input_scale**2 as many pixels."""
        if self.cfg.loss_resolution == "model":
            return float(self.cfg.arch_kwargs.get("input_scale", 1.0))
        return 1.0

    # data
    def datasets(self, cache_dir: str | None):
        s, aug = self.train_scale, self.cfg.augment
        low, high = aug.scale_range
        return (SegmentationDataset(self.train_records, self.classes, crop=max(8, round(self.cfg.crop * s)),
                                    train=True, seed=self.cfg.seed, scale_range=(low * s, high * s),
                                    hflip=aug.hflip, color_jitter=aug.color_jitter, cache_dir=cache_dir),
                SegmentationDataset(self.val_records[: self.cfg.val_images], self.classes, crop=self.cfg.val_crop,
                                    train=False, cache_dir=cache_dir))

    # one step, one validation batch
    def training_step(self, model, batch, amp) -> tuple[torch.Tensor, dict]:
        x, y = batch  # (B, 3, h, w) float, (B, h, w) int64, at train_scale
        # crops already at the model's resolution go straight to the network (no resize in and out)
        forward = model.forward_native if self.train_scale != 1 else model
        with amp.autocast():
            logits = forward(x)  # (B, K, h, w)
        return self.loss_fn(logits.float(), y), {}

    def new_metrics(self) -> MetricSet:
        k, ignore = self.num_classes, self.classes.ignore_index
        return MetricSet(val_loss=Mean(), val=ConfusionMatrix(k, ignore), val_baseline=ConfusionMatrix(k, ignore))

    def validation_step(self, model, batch, metrics: MetricSet) -> None:
        x, y = batch
        logits = model(x).float()
        metrics.update(val_loss=[float(self.loss_fn(logits, y))] * x.shape[0])
        metrics.accumulators["val"].update(logits.argmax(1), y)
        metrics.accumulators["val_baseline"].update(torch.full_like(y, self.majority), y)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # registry
    def registry_config(self) -> dict:
        return {"task": self.name, "scale": 1, "in_channels": 3, "input_range": [0, 1],
                "num_classes": self.num_classes, "classes": self.classes.model_dump(mode="json"),
                "majority_class": self.majority}

    def registry_metadata(self) -> dict:
        return {"dataset": self.source, "train_images": len(self.train_records),
                "valid_images": len(self.val_records), "class_weights": self.class_weights}

    # evaluation of a registered model
    @classmethod
    @torch.inference_mode()
    def evaluate_split(cls, model, card: ModelCard, workspace: str, source: str, split: str, device: torch.device,
                       keep_images: int = 0, limit: int | None = None) -> Evaluation:
        classes = card.classes
        records, skipped = load_segmentation_records(Catalog(workspace), source, split)
        records = records[:limit] if limit else records
        if not records:
            raise PixelmillError(f"no ok images with masks in data set {source!r}, split {split!r}",
                                 "check --dataset and --split (`pixelmill catalog show images`)")
        data = SegmentationDataset(records, classes, crop=None, train=False)
        k, ignore, majority = len(classes.names), classes.ignore_index, card.majority_class or 0
        totals = {"model": ConfusionMatrix(k, ignore), "baseline": ConfusionMatrix(k, ignore)}
        rows, gallery = [], []
        model = model.to(device).eval()
        for i, rec in enumerate(records):
            x, y = data[i]
            pred = model(x.unsqueeze(0).to(device)).argmax(1)[0].cpu()  # (H, W)
            for method, p in (("model", pred), ("baseline", torch.full_like(y, majority))):
                one = ConfusionMatrix(k, ignore)
                one.update(p, y)
                totals[method].merge(one)
                rows.append({"item_id": rec.uri, "method": method} | scalar_scores(one.compute()))
            if i < keep_images:
                image = to_uint8(x)
                gallery.append((image, overlay(image, y.numpy(), classes), overlay(image, pred.numpy(), classes)))
        means = {m: scalar_scores(cm.compute()) | {"images": len(records)} for m, cm in totals.items()}
        for method, cm in totals.items():
            per_class = cm.compute()
            rows += [{"item_id": None, "method": method, "scope": "class", "class_name": name,
                      "iou": per_class["iou_per_class"][c], "accuracy": per_class["acc_per_class"][c]}
                     for c, name in enumerate(classes.names) if c != ignore]
        return Evaluation(rows, means, len(records), skipped, cls.baseline, gallery,
                          report=class_report(totals["model"], classes))


def scalar_scores(result: dict) -> dict:
    return {k: result[k] for k in ("miou", "global_acc", "mean_class_acc")}


def class_report(cm: ConfusionMatrix, classes: ClassMap) -> str:
    """Per-class IoU and accuracy, and the confusion matrix (rows: truth, columns: prediction, in % of the row)."""
    result, counts = cm.compute(), cm.counts()
    kept = [c for c in range(len(classes.names)) if c != classes.ignore_index]
    table = markdown_table(["class", "IoU", "accuracy", "pixels"],
                           [[classes.names[c], f"{result['iou_per_class'][c]:.4g}",
                             f"{result['acc_per_class'][c]:.4g}", int(counts[c].sum())] for c in kept])
    shown = kept[:CONFUSION_SHOWN]
    rows = [[classes.names[t], *(f"{100 * counts[t, p] / max(1, counts[t].sum()):.1f}" for p in shown)]
            for t in shown]
    return ("**per class** (model)\n\n" + table + "\n\n**confusion matrix** (truth x prediction, % of truth)\n\n"
            + markdown_table(["truth \\ pred", *(classes.names[p] for p in shown)], rows))
