"""The training loop, without Prefect: AdamW, one-cycle schedule, clipping, AMP on CUDA, checkpoints, resume.

Reads like a recipe (torchvision's references/segmentation): `train_model` builds everything from a
TrainConfig and runs `train_steps`, calling `hooks` for validation reports and checkpoints so the flow
can publish them and the registry can store them.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from models.factory import build_model
from models.losses import FeatureWeightsMissing, build_loss
from tasks.data import PairDataset, PairRecord
from tasks.errors import ConfigError
from tasks.metrics import psnr_torch


class GanConfig(BaseModel):
    """GAN fine-tuning of a pretrained generator (the schedule and losses are in tasks/gan.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    init_from: str = Field(description="model reference of the pretrained generator, e.g. sr2@production")
    critic_base: int = Field(32, ge=4)
    critic_layers: int = Field(3, ge=1, le=6)
    critic_lr: float = Field(2e-4, gt=0)
    content_weight: float = Field(50.0, ge=0)
    adversarial_weight: float = Field(1.0, gt=0)
    critic_threshold: float = Field(0.65, gt=0, description="switch to the generator below this critic loss")


class TrainConfig(BaseModel):
    """Everything that defines a training run. Defaults train a small U-Net on a CPU in minutes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str = Field("unet-plain", description="see `pixelmill models archs`")
    arch_kwargs: dict[str, Any] = Field(default_factory=dict, description="constructor arguments of the arch")
    task: Literal["restoration", "colorize"] = "restoration"
    loss: Literal["l1", "charbonnier", "feature", "ssim", "l1+ssim"] = "l1"
    feature_weights: str | None = Field(None, description="VGG16-bn weights file or URL for the feature loss")
    steps: int = Field(2000, ge=1, description="optimizer steps (the schedule's length)")
    max_minutes: float | None = Field(None, gt=0, description="stop after this long; the schedule fits it")
    batch_size: int = Field(8, ge=1)
    crop: int = Field(48, ge=8, description="input (LR) crop size in pixels")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    pct_start: float = Field(0.25, gt=0, lt=1, description="share of the schedule spent warming up")
    grad_clip: float = Field(1.0, gt=0)
    val_every: int = Field(100, ge=1, description="validate (and checkpoint) every N steps")
    val_images: int = Field(16, ge=1, description="validation pairs used during training")
    val_crop: int | None = Field(96, ge=8, description="centre crop for validation; None = whole images")
    seed: int = 0
    loader_workers: int = Field(1, ge=0, description="DataLoader worker processes")
    gan: GanConfig | None = Field(None, description="GAN fine-tuning of a pretrained generator (second stage)")

    def fingerprint(self) -> str:
        """What must match for --resume to continue a run (the budget may change)."""
        keep = self.model_dump(mode="json", exclude={"steps", "max_minutes", "val_every", "loader_workers"})
        return hashlib.sha256(repr(sorted(keep.items())).encode()).hexdigest()[:16]


@dataclass
class TrainHooks:
    """What the caller does at each validation: report metrics, store a checkpoint."""

    on_validation: Callable[[dict], None] = lambda metrics: None
    save_checkpoint: Callable[[bytes], None] = lambda state: None


@dataclass
class TrainResult:
    model: torch.nn.Module
    step: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def one_cycle(progress: float, peak: float, pct_start: float) -> float:
    """fastai's one-cycle shape: cosine warm-up from peak/25 to peak, cosine anneal to ~0."""
    start, end = peak / 25, peak / 1e5
    if progress < pct_start:
        t = progress / pct_start
        return start + (peak - start) * (1 - math.cos(math.pi * t)) / 2
    t = min(1.0, (progress - pct_start) / (1 - pct_start))
    return end + (peak - end) * (1 + math.cos(math.pi * t)) / 2


def model_config_for(cfg: TrainConfig, scale: int) -> dict:
    """Restoration nets learn a correction to the bicubic-upscaled input unless arch_kwargs says otherwise."""
    in_channels = 1 if cfg.task == "colorize" else 3
    return {"arch": cfg.arch, "in_channels": in_channels, "out_channels": 3, "scale": scale, "residual": True,
            **cfg.arch_kwargs}


def make_loader(dataset: PairDataset, cfg: TrainConfig, shuffle: bool) -> torch.utils.data.DataLoader:
    workers = cfg.loader_workers
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=shuffle, drop_last=shuffle and len(dataset) >= cfg.batch_size,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(cfg.seed))


def forever(loader):
    while True:
        yield from loader


@torch.inference_mode()
def validate(model: torch.nn.Module, loader, loss_fn, device: torch.device, scale: int) -> dict:
    """Mean loss and Y-PSNR of the model and of the bicubic/identity baseline on the validation crops."""
    model.eval()
    losses, psnr_model, psnr_base = [], [], []
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        pred = model(x).float().clamp(0, 1)
        losses.append(float(loss_fn(pred, y)))
        x3 = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        base = torch.nn.functional.interpolate(x3, scale_factor=scale, mode="bicubic") if scale > 1 else x3
        psnr_model += psnr_torch(pred, y, crop_border=scale if scale > 1 else 0).tolist()
        psnr_base += psnr_torch(base.clamp(0, 1), y, crop_border=scale if scale > 1 else 0).tolist()
    model.train()
    finite = lambda v: [p for p in v if math.isfinite(p)]  # noqa: E731  identical crops give inf
    return {"val_loss": sum(losses) / len(losses),
            "val_psnr_y": sum(finite(psnr_model)) / max(1, len(finite(psnr_model))),
            "val_psnr_y_baseline": sum(finite(psnr_base)) / max(1, len(finite(psnr_base)))}


def state_bytes(model, optimizer, step: int, elapsed: float, cfg: TrainConfig, scale: int) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "elapsed": elapsed, "fingerprint": cfg.fingerprint(), "scale": scale,
                "torch_rng": torch.get_rng_state()}, buf)
    return buf.getvalue()


def load_state(data: bytes) -> dict:
    # weights_only: a checkpoint is data (tensors, numbers), never code
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def train_model(cfg: TrainConfig, train_records: list[PairRecord], val_records: list[PairRecord], scale: int,
                hooks: TrainHooks | None = None, resume: dict | None = None, cache_dir: str | None = None,
                device: torch.device | None = None, init_weights: dict | None = None) -> TrainResult:
    """Build model, data, loss and optimizer from cfg and train.

    `resume` is a loaded checkpoint state; `init_weights` a pretrained generator's state dict (GAN stage).
    """
    hooks = hooks or TrainHooks()
    device = device or pick_device()
    torch.manual_seed(cfg.seed)
    model = build_model(model_config_for(cfg, scale)).to(device)
    in_channels = 1 if cfg.task == "colorize" else 3
    train_ds = PairDataset(train_records, scale, cfg.crop, train=True, in_channels=in_channels, cache_dir=cache_dir)
    val_ds = PairDataset(val_records[: cfg.val_images], scale, cfg.val_crop, train=False, in_channels=in_channels,
                         cache_dir=cache_dir)
    try:  # a missing feature network fails here, before the first step
        loss_fn = build_loss(cfg.loss, **({"weights": cfg.feature_weights} if cfg.loss == "feature" else {}))
    except FeatureWeightsMissing as exc:
        raise ConfigError(str(exc), "or train with --loss l1 (no pretrained network needed)") from None
    loss_fn = loss_fn.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if init_weights is not None:
        model.load_state_dict(init_weights)
    critic = critic_optimizer = None
    if cfg.gan:
        from tasks.gan import critic_for  # tasks.gan builds on this module

        critic = critic_for(cfg.gan).to(device)
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=cfg.gan.critic_lr, betas=(0.0, 0.99))
    step, elapsed = 0, 0.0
    if resume is not None:
        if resume["fingerprint"] != cfg.fingerprint() or resume["scale"] != scale:
            raise ValueError("the checkpoint was made with another training config or pairs set; "
                             "start a new run (without --resume) or use the same config")
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if critic is not None:
            critic.load_state_dict(resume["critic"])
            critic_optimizer.load_state_dict(resume["critic_optimizer"])
        step, elapsed = resume["step"], resume["elapsed"]
        torch.set_rng_state(resume["torch_rng"])
        torch.manual_seed(cfg.seed + step)  # fresh but reproducible draws after the resume point
    if cfg.gan:
        from tasks.gan import gan_steps

        return gan_steps(model, critic, optimizer, critic_optimizer, loss_fn, train_ds, val_ds, cfg, scale, hooks,
                         device, step, elapsed)
    return train_steps(model, optimizer, loss_fn, train_ds, val_ds, cfg, scale, hooks, device, step, elapsed)


def train_steps(model, optimizer, loss_fn, train_ds, val_ds, cfg: TrainConfig, scale: int, hooks: TrainHooks,
                device: torch.device, step: int = 0, elapsed: float = 0.0) -> TrainResult:
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    train_loader, val_loader = make_loader(train_ds, cfg, shuffle=True), make_loader(val_ds, cfg, shuffle=False)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    history: list[dict] = []
    model.train()
    run_started = time.perf_counter()
    started, images = run_started - elapsed, 0  # `elapsed` counts the time before a resume too
    batches = forever(train_loader)
    while step < cfg.steps and elapsed < budget:
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        for group in optimizer.param_groups:
            group["lr"] = one_cycle(max(step / cfg.steps, elapsed / budget), cfg.lr, cfg.pct_start)
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            loss = loss_fn(model(x).float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)} at step {step}: lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step, images = step + 1, images + x.shape[0]
        elapsed = time.perf_counter() - started
        if step % cfg.val_every == 0 or step >= cfg.steps or elapsed >= budget:
            metrics = {"step": step, "train_loss": loss.item(), "lr": optimizer.param_groups[0]["lr"],
                       "elapsed_s": round(elapsed, 1)} | validate(model, val_loader, loss_fn, device, scale)
            history.append(metrics)
            hooks.on_validation(metrics)
            hooks.save_checkpoint(state_bytes(model, optimizer, step, elapsed, cfg, scale))
    this_run = time.perf_counter() - run_started
    return TrainResult(model.eval(), step, history, elapsed, images / this_run if images else 0.0)
