"""GAN fine-tuning, the optional second stage: a pretrained generator against a spectral-norm critic.

An objective that wraps the task's own objective (restoration or colorize): data, validation, metrics and
registry entries are the inner objective's; what changes is the start (a registered generator, loaded by
reference) and the step. Schedule: fastai's adaptive switcher. The critic trains until its loss falls below
`critic_threshold` (at most `critic_max_steps` in a row), then the generator takes one step, then the critic
again, so the critic is always good enough to be worth fooling and neither side runs away. Losses (fastai
GANLoss): the critic uses BCE-with-logits on real targets (1) and generated images (0); the generator's loss is
`content_weight * content loss` (the pretraining loss: L1 or feature loss) plus
`adversarial_weight * BCE(critic(fake), 1)`. The loop counts generator steps; critic turns return no loss.
"""

from __future__ import annotations

import math

import torch

from pixelmill.models.factory import build_model
from pixelmill.tasks.core import registry
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.training.config import GanConfig
from pixelmill.tasks.training.loop import configure_optimizer


class GanObjective:
    def __init__(self, inner, gan: GanConfig, workspace: str):
        self.inner, self.gan, self.workspace = inner, gan, workspace
        self.name = inner.name
        self.critic: torch.nn.Module | None = None
        self.critic_optimizer: torch.optim.Optimizer | None = None
        self.critic_turn, self.critic_loss = True, math.inf
        self.critic_streak = 0  # critic steps since the generator's last one
        self.bce = torch.nn.BCEWithLogitsLoss()

    # what the inner objective decides
    score_key = property(lambda self: self.inner.score_key)
    baseline = property(lambda self: self.inner.baseline)
    scale = property(lambda self: self.inner.scale)

    def describe(self) -> str:
        return f"GAN fine-tuning of {self.gan.init_from} on {self.inner.describe()}"

    def model_config(self) -> dict:
        return self.inner.model_config()

    def datasets(self, cache_dir):
        return self.inner.datasets(cache_dir)

    def new_metrics(self):
        return self.inner.new_metrics()

    def validation_step(self, model, batch, metrics) -> None:
        self.inner.validation_step(model, batch, metrics)

    def registry_config(self) -> dict:
        return self.inner.registry_config()

    def registry_metadata(self) -> dict:
        return self.inner.registry_metadata() | {"gan_from": self.gan.init_from}

    # what the GAN stage changes
    def build_model(self) -> torch.nn.Module:
        """The pretrained generator, by reference; it must be the architecture this stage trains."""
        card = registry.resolve(self.workspace, self.gan.init_from)
        saved = card.factory_config()
        differs = {k: (saved.get(k), v) for k, v in self.model_config().items() if saved.get(k) != v}
        if differs:
            raise PixelmillError(f"{card.ref} does not match the GAN stage's model: {differs} (saved, asked)",
                                 "give the GAN stage the pretrained model's --arch and arch_kwargs")
        return registry.load_weights(card).train()

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        self.inner.setup(model, device)
        self.critic = build_model({"arch": "critic", "base": self.gan.critic_base, "n_layers": self.gan.critic_layers,
                                   "output": "patch"}).to(device).train()
        self.critic_optimizer = configure_optimizer(self.critic.named_parameters(), self.gan.critic_lr, 0.0,
                                                    betas=(0.0, 0.99))

    def training_step(self, model, batch, amp) -> tuple[torch.Tensor | None, dict]:
        x, y = batch
        if self.critic_turn:
            with amp.autocast():
                with torch.no_grad():
                    fake = model(x).clamp(0, 1)
                real_logits, fake_logits = self.critic(y), self.critic(fake)
                loss_c = (self.bce(real_logits.float(), torch.ones_like(real_logits, dtype=torch.float32))
                          + self.bce(fake_logits.float(), torch.zeros_like(fake_logits, dtype=torch.float32)))
            amp.step(loss_c, self.critic_optimizer, self.critic.parameters(), name="critic")
            self.critic_loss = loss_c.item() / 2
            self.critic_streak += 1
            # A critic that cannot tell a good generator's output from the target stays near ln 2 forever: the
            # streak bound hands the turn over anyway, so a step budget always ends.
            self.critic_turn = (self.critic_loss >= self.gan.critic_threshold
                                and self.critic_streak < self.gan.critic_max_steps)
            return None, {"critic_loss": self.critic_loss}
        with amp.autocast():
            fake = model(x)
            fake_logits = self.critic(fake)
        adversarial = self.bce(fake_logits.float(), torch.ones_like(fake_logits, dtype=torch.float32))
        loss = self.gan.content_weight * self.inner.loss_fn(fake.float(), y) + self.gan.adversarial_weight * adversarial
        self.critic_turn, self.critic_streak = True, 0
        return loss, {"adversarial": adversarial.item()}

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "critic_optimizer": self.critic_optimizer.state_dict(),
                "critic_turn": self.critic_turn, "critic_loss": self.critic_loss, "critic_streak": self.critic_streak}

    def load_state_dict(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.critic_turn, self.critic_loss = state["critic_turn"], state["critic_loss"]
        self.critic_streak = state.get("critic_streak", 0)  # checkpoints from before the bound have none

    def evaluate_split(self, *args, **kwargs):
        return self.inner.evaluate_split(*args, **kwargs)
