"""Geometric self-ensemble (`--tta`): the mean of a model's outputs over the 8 flips and quarter turns of its
input, each turned back (Lim et al. 2017, EDSR+). For any model whose output is aligned with its input (images
at `scale` x the size, segmentation logits), at 8 forwards per input: measured in bench/README.md.
"""

from __future__ import annotations

import torch
from torch import nn

# (quarter turns, flip left-right): the dihedral group of the square
TRANSFORMS = tuple((k, flip) for flip in (False, True) for k in range(4))


def transform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = x.flip(-1) if flip else x
    return torch.rot90(x, k, dims=(-2, -1))


def untransform(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    y = torch.rot90(y, -k, dims=(-2, -1))
    return y.flip(-1) if flip else y


class SelfEnsemble(nn.Module):
    """Wraps a model (B, C, H, W) -> (B, C', sH, sW); same outputs' shape, 8x the forwards. The sum is kept in
    float32 even under autocast, so fp16 outputs do not lose precision in the mean."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for k, flip in TRANSFORMS:
            y = untransform(self.model(transform(x, k, flip)), k, flip).float()
            total = y if total is None else total + y
        return total / len(TRANSFORMS)
