"""Building blocks shared by the U-Nets and the critic.

- `icnr_`: the ICNR initialisation that makes conv + PixelShuffle start as nearest-neighbour upsampling.
- `PixelShuffleUp`: conv -> ReLU -> PixelShuffle (-> blur), fastai's PixelShuffle_ICNR written out.
- `SelfAttention`: SAGAN-style attention over all positions, a no-op at init (gamma = 0).
- `ConvBlock`: conv -> BatchNorm (or weight/spectral norm on the conv instead) -> activation.
- `RCAB`: RCAN's residual channel-attention block, no normalisation (what super-resolution nets use).
- `pad_to_multiple` / `crop`: let a network with stride S accept any input size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

Norm = Literal["none", "weight", "spectral"]
Activation = Literal["relu", "leaky_relu", "none"]
NORMS: tuple[str, ...] = ("none", "weight", "spectral")
BLOCKS: tuple[str, ...] = ("conv", "rcab")


def check_choice(name: str, value: object, valid: tuple) -> None:
    """Raise ValueError naming the argument and its valid values when `value` is not one of them."""
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(valid)}")


def apply_norm(conv: nn.Conv2d, norm: Norm) -> nn.Conv2d:
    """Reparametrize the conv's weight with weight norm or spectral norm (in place); 'none' leaves it as it is."""
    check_choice("norm", norm, NORMS)
    if norm == "weight":
        return parametrizations.weight_norm(conv)
    if norm == "spectral":
        return parametrizations.spectral_norm(conv)
    return conv


@torch.no_grad()
def icnr_(weight: torch.Tensor, scale: int = 2, init: Callable[[torch.Tensor], object] = nn.init.kaiming_normal_):
    """ICNR init (Aitken et al. 2017) of a conv weight (C_out * scale**2, C_in, k, k) that feeds nn.PixelShuffle(scale).

    PixelShuffle sends channels c*scale**2 ... c*scale**2 + scale**2 - 1 to the scale x scale block of output
    channel c; giving those channels the same kernel makes every block constant, i.e. the conv + shuffle starts
    as a conv followed by nearest-neighbour upsampling, without the checkerboard of a random init.
    """
    out_ch, in_ch, kh, kw = weight.shape
    if out_ch % (scale**2):
        raise ValueError(f"icnr_: {out_ch} output channels is not a multiple of scale**2 = {scale**2}")
    sub = torch.empty(out_ch // scale**2, in_ch, kh, kw, dtype=weight.dtype, device=weight.device)
    init(sub)
    weight.copy_(sub.repeat_interleave(scale**2, dim=0))
    return weight


class ConvBlock(nn.Sequential):
    """conv(kernel_size, stride, padding (k - 1) // 2: H -> H / stride for even k too) -> BatchNorm -> activation.

    As in fastai's ConvLayer, norm='weight' or 'spectral' reparametrizes the conv weight and replaces the
    BatchNorm; norm='none' keeps the BatchNorm.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, norm: Norm = "none",
                 act: Activation = "relu", batchnorm: bool = True):
        check_choice("act", act, ("relu", "leaky_relu", "none"))
        use_bn = batchnorm and norm == "none"
        conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=not use_bn)
        layers: list[nn.Module] = [apply_norm(conv, norm)]
        if use_bn:
            layers.append(nn.BatchNorm2d(out_ch))
        if act == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif act == "leaky_relu":
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        super().__init__(*layers)


class RCAB(nn.Module):
    """x + CA(conv(relu(conv(x)))), CA a squeeze-and-excitation gate per channel (Zhang et al. 2018, RCAN).

    No BatchNorm: EDSR found it hurts super-resolution (it normalises away the contrast a pixel loss is about).
    """

    def __init__(self, ch: int, reduction: int = 8, norm: Norm = "none"):
        super().__init__()
        inner = max(4, ch // reduction)
        self.body = nn.Sequential(apply_norm(nn.Conv2d(ch, ch, 3, padding=1), norm), nn.ReLU(inplace=True),
                                  apply_norm(nn.Conv2d(ch, ch, 3, padding=1), norm))
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, inner, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(inner, ch, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)  # (B, C, H, W)
        return x + y * self.gate(y)  # gate: (B, C, 1, 1)


def conv_pair(in_ch: int, out_ch: int, norm: Norm = "none", block: str = "conv") -> list[nn.Module]:
    """The two layers of a U-Net level: two ConvBlocks (conv, BatchNorm, ReLU), or for block='rcab' a plain
    conv + ReLU to `out_ch` and an RCAB (no BatchNorm anywhere)."""
    check_choice("block", block, BLOCKS)
    if block == "rcab":
        return [ConvBlock(in_ch, out_ch, norm=norm, batchnorm=False), RCAB(out_ch, norm=norm)]
    return [ConvBlock(in_ch, out_ch, norm=norm), ConvBlock(out_ch, out_ch, norm=norm)]


class PixelShuffleUp(nn.Module):
    """Upsample by `scale`: 1x1 conv (ICNR init) -> ReLU -> PixelShuffle -> optional blur.

    The blur (ReplicationPad2d((1, 0, 1, 0)) + AvgPool2d(2, stride=1)) averages each pixel with its upper-left
    neighbours, which removes the checkerboard artifacts sub-pixel convolution tends to produce (Sugawara et al.
    2019, as in fastai's PixelShuffle_ICNR). The output keeps the exact size scale*H x scale*W.
    """

    def __init__(self, in_ch: int, out_ch: int, scale: int = 2, blur: bool = False, norm: Norm = "none"):
        super().__init__()
        conv = nn.Conv2d(in_ch, out_ch * scale**2, kernel_size=1)
        icnr_(conv.weight, scale)  # before apply_norm: weight norm derives its (g, v) from this weight
        nn.init.zeros_(conv.bias)
        self.conv = apply_norm(conv, norm)
        self.act = nn.ReLU(inplace=True)
        self.shuffle = nn.PixelShuffle(scale)
        self.blur = nn.Sequential(nn.ReplicationPad2d((1, 0, 1, 0)), nn.AvgPool2d(2, stride=1)) if blur else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))  # (B, C_out * s*s, H, W)
        x = self.shuffle(x)  # (B, C_out, s*H, s*W)
        if self.blur is not None:
            x = self.blur(x)  # same shape
        return x


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2018): out = x + gamma * attention(x), gamma starts at 0.

    Query and key are 1x1 convs to ch // 8 channels, value keeps ch; attention runs over all H*W positions
    (memory grows as (H*W)**2 without a fused kernel, so use it at a coarse decoder level).
    """

    def __init__(self, ch: int, norm: Norm = "none"):
        super().__init__()
        inner = max(ch // 8, 1)
        self.query = apply_norm(nn.Conv2d(ch, inner, 1), norm)
        self.key = apply_norm(nn.Conv2d(ch, inner, 1), norm)
        self.value = apply_norm(nn.Conv2d(ch, ch, 1), norm)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C/8)
        k = self.key(x).flatten(2).transpose(1, 2)  # (B, HW, C/8)
        v = self.value(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, HW, C); SAGAN uses no 1/sqrt(d) scaling
        o = o.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.gamma * o


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) at the bottom and right to multiples of `multiple`; return it and the original (H, W).

    Reflect padding where it is possible (pad < size); for tiny inputs, where it is not, replicate padding.
    """
    H, W = x.shape[-2:]
    pad_h, pad_w = (-H) % multiple, (-W) % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (H, W)
    mode = "reflect" if pad_h < H and pad_w < W else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (H, W)


def crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Keep the top-left (H, W) of a (B, C, H', W') tensor, undoing `pad_to_multiple` (times the output scale)."""
    return x[..., : size[0], : size[1]]


class ConfiguredModule(nn.Module):
    """A model that remembers its constructor arguments: `config` is {"arch": name, **kwargs}, JSON-able,
    and `models.factory.build_model(model.config)` rebuilds the same architecture."""

    def __init__(self, arch: str, **kwargs: object):
        super().__init__()
        self._config = {"arch": arch, **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}

    @property
    def config(self) -> dict:
        return {k: list(v) if isinstance(v, list) else v for k, v in self._config.items()}
