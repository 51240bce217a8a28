"""GAN fine-tuning, the optional second stage: a pretrained generator against a spectral-norm critic.

Schedule: fastai's adaptive switcher. The critic trains until its loss falls below `critic_threshold`,
then the generator takes one step, then the critic again. So the critic is always good enough to be
worth fooling, and neither side runs away. Losses (fastai GANLoss): the critic uses BCE-with-logits on
real targets (1) and generated images (0); the generator's loss is `content_weight * content loss`
(the pretraining loss: L1 or feature loss) plus `adversarial_weight * BCE(critic(fake), 1)`.
"""

from __future__ import annotations

import io
import math
import time

import torch

from models.factory import build_model
from tasks.train import GanConfig, TrainHooks, TrainResult, forever, make_loader, one_cycle, validate


def critic_for(gan: GanConfig) -> torch.nn.Module:
    return build_model({"arch": "critic", "base": gan.critic_base, "n_layers": gan.critic_layers, "output": "patch"})


def gan_state_bytes(generator, critic, opt_g, opt_c, step: int, elapsed: float, fingerprint: str, scale: int) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": generator.state_dict(), "critic": critic.state_dict(), "optimizer": opt_g.state_dict(),
                "critic_optimizer": opt_c.state_dict(), "step": step, "elapsed": elapsed,
                "fingerprint": fingerprint, "scale": scale, "torch_rng": torch.get_rng_state()}, buf)
    return buf.getvalue()


def gan_steps(generator, critic, opt_g, opt_c, content_loss, train_ds, val_ds, cfg, scale: int,
              hooks: TrainHooks, device: torch.device, step: int = 0, elapsed: float = 0.0) -> TrainResult:
    """Alternate critic and generator per the adaptive switcher; `step` counts generator steps."""
    gan: GanConfig = cfg.gan
    bce = torch.nn.BCEWithLogitsLoss()
    budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    train_loader, val_loader = make_loader(train_ds, cfg, shuffle=True), make_loader(val_ds, cfg, shuffle=False)
    batches = forever(train_loader)
    run_started = time.perf_counter()
    started, images, history, critic_turn, critic_loss = run_started - elapsed, 0, [], True, math.inf
    generator.train()
    critic.train()
    while step < cfg.steps and elapsed < budget:
        x, y = (t.to(device) for t in next(batches))
        if critic_turn:
            with torch.no_grad():
                fake = generator(x).clamp(0, 1)
            real_logits, fake_logits = critic(y), critic(fake)
            loss_c = bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()
            critic_loss = loss_c.item() / 2
            critic_turn = critic_loss >= gan.critic_threshold
        else:
            for group in opt_g.param_groups:
                group["lr"] = one_cycle(max(step / cfg.steps, elapsed / budget), cfg.lr, cfg.pct_start)
            fake = generator(x)
            fake_logits = critic(fake)
            adversarial = bce(fake_logits, torch.ones_like(fake_logits))
            loss_g = gan.content_weight * content_loss(fake, y) + gan.adversarial_weight * adversarial
            if not torch.isfinite(loss_g):
                raise FloatingPointError(f"GAN generator loss became {loss_g.item()} at step {step}: lower --lr")
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            torch.nn.utils.clip_grad_norm_(generator.parameters(), cfg.grad_clip)
            opt_g.step()
            step, images, critic_turn = step + 1, images + x.shape[0], True
            if step % cfg.val_every == 0 or step >= cfg.steps:
                metrics = {"step": step, "train_loss": loss_g.item(), "adversarial": adversarial.item(),
                           "critic_loss": critic_loss, "lr": opt_g.param_groups[0]["lr"],
                           "elapsed_s": round(time.perf_counter() - started, 1)}
                metrics |= validate(generator, val_loader, content_loss, device, scale)
                history.append(metrics)
                hooks.on_validation(metrics)
                hooks.save_checkpoint(gan_state_bytes(generator, critic, opt_g, opt_c, step,
                                                      time.perf_counter() - started, cfg.fingerprint(), scale))
        elapsed = time.perf_counter() - started
    this_run = time.perf_counter() - run_started
    return TrainResult(generator.eval(), step, history, elapsed, images / this_run if images else 0.0)
