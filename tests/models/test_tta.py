"""Geometric self-ensemble: each of the 8 transforms is undone exactly, and the result is their mean."""

from __future__ import annotations

import torch
from torch import nn

from pixelmill.models.factory import build_model
from pixelmill.models.tta import TRANSFORMS, SelfEnsemble, transform, untransform


def test_the_eight_transforms_are_distinct_and_undone():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    seen = {tuple(transform(x, k, flip).flatten().tolist()) for k, flip in TRANSFORMS}
    assert len(TRANSFORMS) == 8 and len(seen) == 8
    for k, flip in TRANSFORMS:
        assert torch.equal(untransform(transform(x, k, flip), k, flip), x)


def test_an_equivariant_model_is_unchanged_and_another_is_averaged():
    x = torch.rand(1, 3, 9, 13)
    identity = SelfEnsemble(nn.Identity())
    assert torch.allclose(identity(x), x)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 3, padding=1)  # a random kernel has no symmetry
    by_hand = sum(untransform(conv(transform(x, k, f)), k, f) for k, f in TRANSFORMS) / 8
    out = SelfEnsemble(conv)(x)
    assert out.shape == (1, 2, 9, 13) and torch.allclose(out, by_hand, atol=1e-6)
    assert not torch.allclose(out, conv(x), atol=1e-3)


def test_a_super_resolution_unet_keeps_its_output_size():
    torch.manual_seed(0)
    model = build_model({"arch": "unet-plain", "scale": 2, "base": 8, "depth": 2}).eval()
    with torch.inference_mode():
        assert SelfEnsemble(model)(torch.rand(1, 3, 11, 17)).shape == (1, 3, 22, 34)
