"""The smallest restoration model: bicubic resize, then a per-pixel colour matrix (a 1x1 convolution).

It starts as exactly bicubic (the identity at scale 1), so it is the baseline every trained model must beat and
the reference that checks everything around a model: archive fidelity (an identity model must give back the
input's colours, depth and metadata) and the output checks (a colour matrix set to shift colours must be flagged).
"""

from __future__ import annotations

import torch
from torch import nn

from pixelmill.models.blocks import ConfiguredModule


class BicubicColour(ConfiguredModule):
    def __init__(self, in_channels: int = 3, out_channels: int = 3, scale: int = 1):
        super().__init__("bicubic", in_channels=in_channels, out_channels=out_channels, scale=scale)
        self.scale, self.out_channels = scale, out_channels
        self.colour = nn.Conv2d(out_channels, out_channels, 1)
        with torch.no_grad():
            self.colour.weight.copy_(torch.eye(out_channels)[:, :, None, None])
            self.colour.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, s*H, s*W)
        x = x.expand(-1, self.out_channels, -1, -1) if x.shape[1] != self.out_channels else x
        if self.scale > 1:
            x = nn.functional.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return self.colour(x)
