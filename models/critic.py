"""GAN critic: a spectral-norm conv net that scores patches of an image as real or generated.

After fastai's gan_critic: stride-2 4x4 convs that double the channels, spectral norm on every conv,
LeakyReLU(0.2), no BatchNorm, optional self-attention after the first downsampling, and a final 3x3 conv to
one logit per patch.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from pixelmill.models.blocks import (
    ConfiguredModule,
    ConvBlock,
    SelfAttention,
    apply_norm,
    check_choice,
    pad_to_multiple,
)

OUTPUTS = ("patch", "global")


class Critic(ConfiguredModule):
    """Spectral-norm conv critic.

    Input (B, in_channels, H, W), any size (padded, reflect, to a multiple of 2**n_layers). Output: raw logits
    (no sigmoid; use BCE-with-logits or a hinge loss), either
    - output='patch': (B, 1, ceil(H / 2**n_layers), ceil(W / 2**n_layers)), one logit per receptive-field patch, or
    - output='global': (B,), the mean of the patch logits.
    Channels: base * 2**i after the i-th downsampling, capped at base * 8.
    """

    def __init__(self, in_channels: int = 3, base: int = 64, n_layers: int = 4,
                 output: Literal["patch", "global"] = "patch", self_attention: bool = False):
        check_choice("output", output, OUTPUTS)
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        super().__init__("critic", in_channels=in_channels, base=base, n_layers=n_layers, output=output,
                         self_attention=self_attention)
        self.output, self.stride = output, 2**n_layers
        ch = [in_channels] + [base * 2 ** min(i, 3) for i in range(n_layers)]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers.append(ConvBlock(ch[i], ch[i + 1], kernel_size=4, stride=2, norm="spectral", act="leaky_relu"))
            if self_attention and i == 0:
                layers.append(SelfAttention(ch[1], norm="spectral"))
        self.features = nn.Sequential(*layers)
        self.head = apply_norm(nn.Conv2d(ch[-1], 1, kernel_size=3, padding=1), "spectral")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = pad_to_multiple(x, self.stride)  # (B, C_in, H', W'), multiples of 2**n_layers
        x = self.features(x)  # (B, C, H'/2**n, W'/2**n)
        logits = self.head(x)  # (B, 1, H'/2**n, W'/2**n)
        return logits.mean(dim=(1, 2, 3)) if self.output == "global" else logits
