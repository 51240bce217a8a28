"""Training configs, without torch: the CLI, `--help`, ingest and crappify import this and stay fast.

A `TrainConfig` is a flow parameter (the Prefect UI shows and edits it), a YAML file (`--config`) and the
record of how a registered model was made. `task` picks the objective (tasks/training/objectives.py);
`gan` turns the run into the GAN fine-tuning stage of that task.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pixelmill.tasks.core.model_tasks import MODEL_TASKS

# The image losses models/losses.py builds (a test keeps the lists equal; models/ cannot import tasks/),
# and segmentation's cross-entropy.
LossName = Literal["l1", "charbonnier", "feature", "ssim", "l1+ssim", "cross_entropy"]
# The model tasks, from the one table that names each task's objective and predictor.
TaskName = Literal[tuple(MODEL_TASKS)]


class GanConfig(BaseModel):
    """GAN fine-tuning of a pretrained generator (the schedule and losses are in tasks/training/gan.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    init_from: str = Field(description="model reference of the pretrained generator, e.g. sr2@production")
    critic_base: int = Field(32, ge=4)
    critic_layers: int = Field(3, ge=1, le=6)
    critic_lr: float = Field(2e-4, gt=0)
    content_weight: float = Field(50.0, ge=0)
    adversarial_weight: float = Field(1.0, gt=0)
    critic_threshold: float = Field(0.65, gt=0, description="switch to the generator below this critic loss")
    critic_max_steps: int = Field(20, ge=1, description="the generator's turn after this many critic steps in a "
                                  "row, even above the threshold")


class AugmentConfig(BaseModel):
    """Segmentation's joint augmentation of image and mask (tasks/training/segdata.py `augment`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scale_range: tuple[float, float] = Field((1.0, 1.0), description="rescale each pair by U(low, high) "
                                             "before cropping (torchvision's references use 0.5-2.0)")
    hflip: bool = Field(True, description="flip left-right with probability 0.5")
    color_jitter: tuple[float, float, float, float] = Field(
        (0.0, 0.0, 0.0, 0.0), description="brightness, contrast, saturation (factors 1 +- each), hue shift +-")

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        check_augmentation(self.scale_range, self.color_jitter)
        return self


def check_augmentation(scale_range: Sequence[float], color_jitter: Sequence[float]) -> None:
    """ValueError unless 0 < low <= high and jitter is (brightness, contrast, saturation in [0, 1), hue in
    [0, 0.5]): the config and the data set (which tests build directly) check the same rule."""
    if not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f"scale_range must be 0 < low <= high, got {tuple(scale_range)}")
    if len(color_jitter) != 4 or min(color_jitter) < 0 or max(color_jitter[:3]) >= 1 or color_jitter[3] > 0.5:
        raise ValueError("color_jitter is (brightness, contrast, saturation, hue) with the first three in "
                         f"[0, 1) and hue in [0, 0.5], got {tuple(color_jitter)}")


DEFAULT_STEPS = 2000  # a run given neither --steps nor --max-minutes

# Each model task's own defaults, under what a config or flag sets (the field defaults below are restoration's).
# Segmentation's come from bench/segment.py's ablations on CamVid (bench/README.md): the model works at half
# resolution (input_scale 0.5: 4x fewer pixels per step, and road scenes lose little), the loss is computed
# there, crops of 256 source pixels (128 at the model), whole validation images, and a higher peak rate.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "restoration": {},
    "colorize": {},
    "segmentation": {"arch_kwargs": {"input_scale": 0.5}, "crop": 256, "batch_size": 8, "lr": 3e-3,
                     "val_crop": None, "val_images": 8, "val_every": 250, "loss_resolution": "model"},
}


class TrainConfig(BaseModel):
    """Everything that defines a training run. Defaults train a small U-Net on a CPU in minutes.

    A field left unset takes its task's default (`TASK_DEFAULTS`), so `TrainConfig(task="segmentation")` is
    what `pixelmill train segmentation` trains; the dumped config (in the registry) holds the values used.
    `steps` unset: the run lasts `max_minutes` when that is given (the schedule fits the time), else
    DEFAULT_STEPS steps.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: TaskName = Field("restoration", description="what the model learns: the objective")
    arch: str = Field("unet-plain", description="see `pixelmill models archs`")
    arch_kwargs: dict[str, Any] = Field(default_factory=dict, description="constructor arguments of the arch")
    loss: LossName | None = Field(None, description="None: the task's own (l1 for images, cross_entropy for masks)")
    feature_weights: str | None = Field(None, description="VGG16-bn weights file or URL for the feature loss")
    steps: int | None = Field(None, ge=1, description="optimizer steps (the schedule's length); None: as many as "
                              f"max_minutes allows, or {DEFAULT_STEPS} without a time budget")
    max_minutes: float | None = Field(None, gt=0, description="stop after this long; the schedule fits it")
    batch_size: int = Field(8, ge=1)
    crop: int = Field(48, ge=8, description="input crop size in pixels")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0, description="AdamW decay of weight matrices and kernels")
    pct_start: float = Field(0.25, gt=0, lt=1, description="share of the schedule spent warming up")
    grad_clip: float = Field(1.0, gt=0)
    val_every: int = Field(100, ge=1, description="validate (and checkpoint) every N steps")
    val_images: int = Field(16, ge=1, description="validation images used during training")
    val_crop: int | None = Field(96, ge=8, description="centre crop for validation; None = whole images")
    seed: int = 0
    loader_workers: int = Field(1, ge=0, description="DataLoader worker processes")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
                        description="auto = CUDA when present, else the CPU")
    classes: str | None = Field(None, description="segmentation: a class map preset (camvid, scenes) or YAML file")
    class_weights: Literal["none", "median_frequency"] = Field(
        "median_frequency", description="segmentation: SegNet's median-frequency balancing from the train masks")
    dice_weight: float = Field(0.0, ge=0, le=10, description="segmentation: weight of a soft Dice term")
    focal_gamma: float = Field(0.0, ge=0, le=10, description="segmentation: focal term's gamma (0 = plain CE)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="segmentation: augmentation")
    loss_resolution: Literal["model", "input"] = Field(
        "input", description="segmentation with input_scale < 1: 'model' trains and scores the loss at the "
        "model's working resolution (crops shrunk by input_scale, masks resized with them), 'input' at the crop's")
    ema: float | None = Field(None, gt=0, lt=1, description="decay of a moving average of the weights that is "
                              "validated and kept instead of the last weights (e.g. 0.999); None: off")
    gan: GanConfig | None = Field(None, description="GAN fine-tuning of a pretrained generator (second stage)")

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults = TASK_DEFAULTS.get(data.get("task", "restoration"), {})
        merged = {k: v for k, v in defaults.items() if k not in data} | data
        if "arch_kwargs" in defaults and "arch_kwargs" in data:  # yours over the task's (input_scale)
            merged["arch_kwargs"] = defaults["arch_kwargs"] | dict(data["arch_kwargs"] or {})
        if merged.get("steps") is None and merged.get("max_minutes") is None:
            merged["steps"] = DEFAULT_STEPS
        return merged

    @property
    def step_limit(self) -> float:
        """The steps the run may take: `steps`, or unbounded when only the time budget is given."""
        return self.steps or math.inf

    def progress(self, step: int, elapsed_s: float) -> float:
        """Share of the budget spent (the schedule's position): steps or minutes, whichever runs out first."""
        budget = self.max_minutes * 60 if self.max_minutes else math.inf
        return min(1.0, max(step / self.step_limit, elapsed_s / budget))

    def fingerprint(self) -> str:
        """What must match for --resume to continue a run (the budget, cadence and hardware may change)."""
        keep = self.model_dump(mode="json", exclude={"steps", "max_minutes", "val_every", "loader_workers", "device"})
        return hashlib.sha256(repr(sorted(keep.items())).encode()).hexdigest()[:16]
