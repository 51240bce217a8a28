"""Training configs, without torch: the CLI, `--help`, ingest and crappify import this and stay fast.

A `TrainConfig` is a flow parameter (the Prefect UI shows and edits it), a YAML file (`--config`) and the
record of how a registered model was made. `task` picks the objective (tasks/training/objectives.py);
`gan` turns the run into the GAN fine-tuning stage of that task.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class TrainConfig(BaseModel):
    """Everything that defines a training run. Defaults train a small U-Net on a CPU in minutes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: TaskName = Field("restoration", description="what the model learns: the objective")
    arch: str = Field("unet-plain", description="see `pixelmill models archs`")
    arch_kwargs: dict[str, Any] = Field(default_factory=dict, description="constructor arguments of the arch")
    loss: LossName | None = Field(None, description="None: the task's own (l1 for images, cross_entropy for masks)")
    feature_weights: str | None = Field(None, description="VGG16-bn weights file or URL for the feature loss")
    steps: int = Field(2000, ge=1, description="optimizer steps (the schedule's length)")
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
    gan: GanConfig | None = Field(None, description="GAN fine-tuning of a pretrained generator (second stage)")

    def fingerprint(self) -> str:
        """What must match for --resume to continue a run (the budget, cadence and hardware may change)."""
        keep = self.model_dump(mode="json", exclude={"steps", "max_minutes", "val_every", "loader_workers", "device"})
        return hashlib.sha256(repr(sorted(keep.items())).encode()).hexdigest()[:16]
