"""The one training loop, without Prefect. It knows nothing about what is learned: an objective does.

Reads like torchvision's references/segmentation/train.py: `train_model` builds the model and optimizer
from the objective, restores a checkpoint, then alternates `train_one_epoch`-style stepping with
`evaluate`. What every model task gets from here, once: AdamW with biases and norm weights out of weight
decay, the one-cycle schedule driven by the step or time budget, AMP (fp16) and channels_last on CUDA,
gradient clipping, an optional moving average of the weights (`ema`), validation and a checkpoint every
`val_every` steps and at the end, and exact resume.

A checkpoint is one dict: model, optimizer, objective state (a GAN's critic), step, elapsed seconds,
samples consumed, torch RNG, the weight average and the config fingerprint. Data order and augmentations derive from
(seed, sample position), so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from pixelmill.models.device import pick_device
from pixelmill.tasks.core.errors import ConfigError
from pixelmill.tasks.core.faults import fault_point
from pixelmill.tasks.training.config import TrainConfig
from pixelmill.tasks.training.datasets import SampleStream


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


def one_cycle(progress: float, peak: float, pct_start: float) -> float:
    """fastai's one-cycle shape: cosine warm-up from peak/25 to peak, cosine anneal to ~0."""
    start, end = peak / 25, peak / 1e5
    if progress < pct_start:
        t = progress / pct_start
        return start + (peak - start) * (1 - math.cos(math.pi * t)) / 2
    t = min(1.0, (progress - pct_start) / (1 - pct_start))
    return end + (peak - end) * (1 + math.cos(math.pi * t)) / 2


def configure_optimizer(params: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float,
                        **adam) -> torch.optim.Optimizer:
    """AdamW where only weight matrices and kernels decay (nanoGPT's rule): biases, norm weights and other
    1-D parameters are offsets and scales, and pulling them towards 0 only hurts."""
    params = [p for _, p in params if p.requires_grad]
    decay, no_decay = [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, **adam)


class Amp:
    """Mixed precision on CUDA (fp16 autocast and a loss scaler per optimizer), plain fp32 elsewhere.

    Objectives run every forward pass under `autocast()` and every update through `step()`, so AMP and
    clipping are written once for the generator, a critic, or whatever else an objective trains.
    """

    def __init__(self, device: torch.device, grad_clip: float):
        self.device, self.enabled, self.grad_clip = device, device.type == "cuda", grad_clip
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self._saved: dict[str, dict] = {}  # a checkpoint's scaler states, applied when each scaler is made

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.enabled)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if self.enabled and t.ndim == 4 else t

    def state_dict(self) -> dict[str, dict]:
        """The loss scales: a resume that restarted them at 65536 would skip different steps (measured on an
        H200: weights 0.1 apart after 20 steps) instead of continuing the same run."""
        return {name: scaler.state_dict() for name, scaler in self.scalers.items()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        self._saved = dict(state)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor],
             name: str = "model") -> None:
        """Backward, unscale, clip to `grad_clip`, step, for one optimizer (`name`: whose loss scale)."""
        scaler = self.scalers.get(name)
        if scaler is None:
            scaler = self.scalers[name] = torch.amp.GradScaler("cuda", enabled=self.enabled)
            if self.enabled and self._saved.get(name):
                scaler.load_state_dict(self._saved[name])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(list(params), self.grad_clip)
        scaler.step(optimizer)
        scaler.update()


class WeightAverage:
    """An exponential moving average of a model's weights (buffers copied as they are), the copy that is
    validated and kept. The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates (timm's
    ModelEma warm-up), so the first steps' random weights do not linger in the average."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]


def make_loader(dataset, cfg: TrainConfig, train: bool, start: int = 0) -> torch.utils.data.DataLoader:
    """Train: an endless stream of batches from `start` (samples already consumed). Validation: one pass."""
    workers = cfg.loader_workers
    # whole validation images (val_crop None) may differ in size, and only equal sizes stack into a batch
    batch_size = cfg.batch_size if train or cfg.val_crop else 1
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=SampleStream(len(dataset), cfg.seed, start) if train else None,
        num_workers=workers, persistent_workers=workers > 0 and not train,
        pin_memory=torch.cuda.is_available())


@torch.inference_mode()
def evaluate(model: torch.nn.Module, objective, loader, amp: Amp) -> dict[str, float]:
    """One pass over the validation loader into the objective's metric accumulators."""
    model.eval()
    metrics = objective.new_metrics()
    for batch in loader:
        with amp.autocast():
            objective.validation_step(model, [amp.to_device(t) for t in batch], metrics)
    model.train()
    return metrics.compute()


def state_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_state(data: bytes) -> dict:
    # weights_only: a checkpoint is data (tensors, numbers), never code
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def train_model(objective, cfg: TrainConfig, hooks: TrainHooks | None = None, resume: dict | None = None,
                cache_dir: str | None = None) -> TrainResult:
    """Train the objective's model for cfg's step and time budget; `resume` is a loaded checkpoint."""
    hooks = hooks or TrainHooks()
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = objective.build_model().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    objective.setup(model, device)  # the loss (a missing feature network fails here), a critic
    optimizer = configure_optimizer(model.named_parameters(), cfg.lr, cfg.weight_decay)
    step, elapsed, samples = 0, 0.0, 0
    amp = Amp(device, cfg.grad_clip)
    average = WeightAverage(model, cfg.ema) if cfg.ema else None
    kept = average.model if average else model  # what is validated, checkpointed as the result and returned
    if resume is not None:
        if resume.get("fingerprint") != cfg.fingerprint() or resume.get("objective_name") != objective.name:
            raise ConfigError("the checkpoint was made with another training config or data set",
                              "start a new run (without --resume), or resume with the same config")
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        objective.load_state_dict(resume["objective"])
        step, elapsed, samples = resume["step"], resume["elapsed"], resume["samples"]
        torch.set_rng_state(resume["torch_rng"])
        amp.load_state_dict(resume.get("amp", {}))  # older checkpoints have none: the scales start afresh
        if average:
            average.load_state_dict(resume["ema"])
    train_ds, val_ds = objective.datasets(cache_dir)
    batches = iter(make_loader(train_ds, cfg, train=True, start=samples))
    val_loader = make_loader(val_ds, cfg, train=False)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    history: list[dict] = []
    run_started = time.perf_counter()
    started, images = run_started - elapsed, 0  # `elapsed` counts the time before a resume too
    last: dict = {}

    def validate_and_checkpoint() -> None:
        metrics = {"step": step, **last, "lr": optimizer.param_groups[0]["lr"],
                   "elapsed_s": round(elapsed, 1)} | evaluate(kept, objective, val_loader, amp)
        history.append(metrics)
        hooks.on_validation(metrics)
        hooks.save_checkpoint(state_bytes({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "objective": objective.state_dict(),
            "objective_name": objective.name, "step": step, "elapsed": elapsed, "samples": samples,
            "fingerprint": cfg.fingerprint(), "torch_rng": torch.get_rng_state(), "amp": amp.state_dict(),
            **({"ema": average.state_dict()} if average else {})}))
        fault_point("train.checkpoint")

    model.train()
    while step < cfg.step_limit and elapsed < budget:
        batch = [amp.to_device(t) for t in next(batches)]
        samples += batch[0].shape[0]
        for group in optimizer.param_groups:
            group["lr"] = one_cycle(cfg.progress(step, elapsed), cfg.lr, cfg.pct_start)
        with amp.autocast():
            loss, logs = objective.training_step(model, batch, amp)
        last |= logs
        if loss is not None:  # None: the objective spent this batch on something else (a critic's turn)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at step {step}: lower --lr or check the data")
            amp.step(loss, optimizer, model.parameters())
            if average:
                average.update(model)
            step, images, last["train_loss"] = step + 1, images + batch[0].shape[0], loss.item()
        elapsed = time.perf_counter() - started
        if loss is not None and step % cfg.val_every == 0:
            validate_and_checkpoint()
    if not history or history[-1]["step"] != step:  # stopped by the budget between validations
        validate_and_checkpoint()
    with contextlib.suppress(Exception):  # end the loader's worker processes now, not at garbage collection
        batches._shutdown_workers()
    this_run = time.perf_counter() - run_started
    return TrainResult(kept.eval(), step, history, elapsed, images / this_run if images else 0.0)
