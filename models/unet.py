"""U-Nets for restoration, super-resolution, colorization and semantic segmentation.

- `ResNetUNet`: torchvision ResNet encoder (ImageNet weights when available, never required) and a
  PixelShuffle decoder with skip connections, fastai's DynamicUnet written out explicitly.
- `PlainUNet`: a small U-Net without a pretrained encoder that trains on a CPU in minutes.
- `predict`: run a model in eval mode under torch.inference_mode().

Both U-Nets take (B, in_channels, H, W) of any size, pad it (reflect) to a multiple of their stride, and return
(B, out_channels, scale*H, scale*W). By default they predict the image directly; residual=True adds their
output to the bicubic-upscaled input instead (the training flow's default for restoration).
`model.config` is the JSON-able dict that rebuilds the architecture.

A segmentation net is the same U-Net with out_channels = the number of classes, scale 1, residual False and
final_activation 'none': its output is (B, classes, H, W) logits at the input's resolution, for softmax
cross-entropy (`losses.SegmentationLoss`) and argmax at prediction. No separate arch name: the registry's
model config says which task a model was trained for.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from pixelmill.models.blocks import (
    NORMS,
    ConfiguredModule,
    ConvBlock,
    Norm,
    PixelShuffleUp,
    SelfAttention,
    check_choice,
    conv_pair,
    crop,
    pad_to_multiple,
)

Encoder = Literal["resnet18", "resnet34", "resnet50"]
# channels of the encoder features at strides 2, 4, 8, 16, 32
ENCODER_CHANNELS: dict[str, tuple[int, int, int, int, int]] = {
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
}
SCALES = (1, 2, 4)
FINAL_ACTIVATIONS = ("none", "sigmoid")


# ----------------------------------------------------------------------------------------------------------------
# encoder and its weights


def imagenet_cache_path(encoder: Encoder) -> Path:
    """Where torchvision would have cached the encoder's default ImageNet weights (torch.hub's checkpoints dir)."""
    url = torchvision.models.get_model_weights(encoder).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def read_encoder_weights(encoder: Encoder, weights: str | None) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """Return (state_dict, source) for `weights`, or (None, None) when the encoder stays randomly initialised.

    weights=None: the torch hub cache file of the ImageNet weights if it exists (never downloads);
    "random": nothing; an http(s) URL: torch.hub.load_state_dict_from_url (downloads to the hub cache);
    anything else: a local file saved with torch.save(state_dict), loaded with weights_only=True.
    """
    if weights == "random":
        return None, None
    if weights is None:
        path = imagenet_cache_path(encoder)
        if not path.is_file():
            return None, None
    elif urlparse(weights).scheme in ("http", "https"):
        state = torch.hub.load_state_dict_from_url(weights, map_location="cpu", weights_only=True, progress=False)
        return state, weights
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"encoder weights file {weights!r} does not exist (give a path, an http(s) URL, "
                                    "'random', or None for the torch hub cache)")
    return torch.load(path, map_location="cpu", weights_only=True), str(path)


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of an RGB conv for `in_channels` inputs: 1 channel gets the sum over RGB (a gray image x the RGB
    kernels gives the same response as the gray image repeated 3 times); n channels cycle RGB, scaled by 3/n."""
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        w = conv.weight  # (C_out, 3, k, k)
        if in_channels == 1:
            new.weight.copy_(w.sum(dim=1, keepdim=True))
        else:
            new.weight.copy_(w[:, torch.arange(in_channels) % 3] * (3 / in_channels))
    return new


class ResNetEncoder(nn.Module):
    """The convolutional part of a torchvision ResNet (no avgpool/fc), returning features at strides 2..32.

    Attribute names match torchvision's, so a torchvision ResNet state dict (minus fc.*) loads as is.
    """

    def __init__(self, name: Encoder, in_channels: int = 3, weights: str | None = None, pretrained: bool = True):
        super().__init__()
        check_choice("encoder", name, tuple(ENCODER_CHANNELS))
        resnet = getattr(torchvision.models, name)(weights=None)
        self.channels = ENCODER_CHANNELS[name]
        self.weights_source: str | None = None  # where the loaded weights came from, for logs
        if pretrained:
            state, source = read_encoder_weights(name, weights)
            if state is not None:
                state = {k: v for k, v in state.items() if not k.startswith("fc.")}
                try:
                    missing, unexpected = resnet.load_state_dict(state, strict=False)
                except RuntimeError as e:  # shape mismatches
                    raise ValueError(f"encoder weights {source!r} do not fit {name}: {e}") from None
                missing = [k for k in missing if not k.startswith("fc.")]
                if missing or unexpected:
                    raise ValueError(f"encoder weights {source!r} do not fit {name}: missing keys {missing[:5]}, "
                                     f"unexpected keys {unexpected[:5]}")
                self.weights_source = source
        self.conv1 = resnet.conv1 if in_channels == 3 else adapt_first_conv(resnet.conv1, in_channels)
        self.bn1, self.relu, self.maxpool = resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.relu(self.bn1(self.conv1(x)))  # (B, c0, H/2, W/2)
        x1 = self.layer1(self.maxpool(x0))  # (B, c1, H/4, W/4)
        x2 = self.layer2(x1)  # (B, c2, H/8, W/8)
        x3 = self.layer3(x2)  # (B, c3, H/16, W/16)
        x4 = self.layer4(x3)  # (B, c4, H/32, W/32)
        return [x0, x1, x2, x3, x4]


# ----------------------------------------------------------------------------------------------------------------
# decoder


class UpBlock(nn.Module):
    """Upsample x2 (PixelShuffle, ICNR), concatenate the skip, two 3x3 ConvBlocks, optional self-attention."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, blur: bool = True, self_attention: bool = False,
                 norm: Norm = "none", block: str = "conv"):
        super().__init__()
        self.up = PixelShuffleUp(in_ch, out_ch, scale=2, blur=blur, norm=norm)
        self.conv1, self.conv2 = conv_pair(out_ch + skip_ch, out_ch, norm, block)
        self.attn = SelfAttention(out_ch, norm=norm) if self_attention else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, out, 2H, 2W), the skip's size
        x = torch.cat([x, skip], dim=1)  # (B, out + skip, 2H, 2W)
        x = self.conv2(self.conv1(x))  # (B, out, 2H, 2W)
        return self.attn(x)


def upscale_stages(ch: int, scale: int, blur: bool, norm: Norm, block: str = "conv") -> nn.Sequential:
    """log2(scale) x (PixelShuffleUp x2 + ConvBlock) at `ch` channels: the super-resolution tail."""
    check_choice("scale", scale, SCALES)
    stages = [nn.Sequential(PixelShuffleUp(ch, ch, 2, blur=blur, norm=norm),
                            ConvBlock(ch, ch, norm=norm, batchnorm=block == "conv"))
              for _ in range(int(math.log2(scale)))]
    return nn.Sequential(*stages)


def espcn_head(ch: int, out_channels: int, scale: int, final_activation: str) -> nn.Sequential:
    """The upscaling and the output in one: a 3x3 conv at the input's size to out_channels * scale**2 channels,
    then PixelShuffle (ESPCN, Shi et al. 2016). Nothing runs at the output's size, where `upscale_stages`' 3x3
    convs cost 40% of an x2 net's training step and nearly all of an x4 one's (bench/README.md)."""
    check_choice("final_activation", final_activation, FINAL_ACTIVATIONS)
    layers: list[nn.Module] = [nn.Conv2d(ch, out_channels * scale**2, 3, padding=1), nn.PixelShuffle(scale)]
    if final_activation == "sigmoid":
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def output_head(ch: int, out_channels: int, final_activation: str) -> nn.Sequential:
    """1x1 conv to the output channels, then sigmoid or nothing."""
    check_choice("final_activation", final_activation, FINAL_ACTIVATIONS)
    layers: list[nn.Module] = [nn.Conv2d(ch, out_channels, 1)]
    if final_activation == "sigmoid":
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def check_residual(residual: bool, in_channels: int, out_channels: int, final_activation: str) -> None:
    if residual and (final_activation != "none" or out_channels not in (in_channels, 3) or in_channels not in (1, 3)):
        raise ValueError("residual=True needs an image out (out_channels 3, or equal to in_channels) and "
                         f"final_activation 'none'; got in={in_channels}, out={out_channels}, {final_activation!r}")


def check_input_scale(input_scale: float, residual: bool) -> None:
    if not 0.125 <= input_scale <= 1:
        raise ValueError(f"input_scale must be in [0.125, 1], got {input_scale}")
    if residual and input_scale != 1:
        raise ValueError("input_scale < 1 is for outputs that may be upsampled (segmentation logits), "
                         "not for residual image restoration")


def shrunk(n, scale: float):
    """round(n * scale), at least 1, halves to even: Python's round, and in a traced graph (an ONNX export, where
    n is a tensor) torch.round, which ONNX's Round matches, so exported and eager models agree at odd sizes."""
    if torch.is_tensor(n):
        return torch.round(n * scale).clamp(min=1).to(torch.int64)
    return max(1, round(n * scale))


def at_input_scale(forward, x: torch.Tensor, input_scale: float, scale: int) -> torch.Tensor:
    """Run `forward` on x shrunk by input_scale, then bring the output to scale x the input size.

    A segmentation net at half resolution costs a quarter of the compute (CamVid on a CPU); its logits are
    upsampled bilinearly, so callers always see outputs at the input's size.
    """
    if input_scale == 1:
        return forward(x)
    H, W = x.shape[-2:]
    small = nn.functional.interpolate(x, size=(shrunk(H, input_scale), shrunk(W, input_scale)),
                                      mode="bilinear", align_corners=False, antialias=True)  # (B, C, h, w)
    y = forward(small)  # (B, C_out, s*h, s*w)
    return nn.functional.interpolate(y, size=(scale * H, scale * W), mode="bilinear", align_corners=False)


def zero_last_conv_(head: nn.Sequential) -> None:
    """Residual nets start as the identity on top of bicubic, not bicubic plus random noise."""
    nn.init.zeros_(head[0].weight)
    nn.init.zeros_(head[0].bias)


def residual_base(x: torch.Tensor, scale: int, out_channels: int) -> torch.Tensor:
    """What the network adds its output to when residual=True: the input, upscaled bicubic (grey repeated).

    Restoration nets then start at the baseline's quality and learn only the correction, which trains
    far faster than predicting the whole image (VDSR's global residual).
    """
    x = x.expand(-1, out_channels, -1, -1) if x.shape[1] != out_channels else x  # (B, C_out, H, W)
    return nn.functional.interpolate(x, scale_factor=scale, mode="bicubic") if scale > 1 else x


# ----------------------------------------------------------------------------------------------------------------
# models


class ResNetUNet(ConfiguredModule):
    """U-Net with a torchvision ResNet encoder and a PixelShuffle (ICNR, optional blur) decoder.

    encoder: resnet18 | resnet34 | resnet50. in_channels: 3, or 1 for colorization (the first conv's pretrained
    weights are summed over RGB). out_channels: 3 for restoration/colorization. scale: 1, 2 or 4, the output is
    scale x the input size (super-resolution). blur: blur after every PixelShuffle (no checkerboard).
    self_attention: SAGAN attention after the stride-8 decoder block. norm: 'none' (BatchNorm in the decoder),
    'weight' or 'spectral' (on the decoder convs, replacing BatchNorm; the encoder keeps its BatchNorm).
    weights: None = ImageNet weights from the torch hub cache if the file is there (never downloads),
    'random', a state-dict file path, or an http(s) URL (downloaded). decoder_channels: the five decoder
    stages at strides 16, 8, 4, 2, 1. pretrained=False skips loading encoder weights (e.g. when a checkpoint
    will overwrite them); it is not part of `config`.

    Input (B, in_channels, H, W), any H and W; output (B, out_channels, scale*H, scale*W). With batch size 1
    in train mode the input must be at least 33 px a side (BatchNorm needs more than one value at stride 32).
    """

    stride = 32

    def __init__(self, encoder: Encoder, in_channels: int = 3, out_channels: int = 3, scale: int = 1,
                 blur: bool = True, self_attention: bool = False, norm: Norm = "none", weights: str | None = None,
                 final_activation: Literal["none", "sigmoid"] = "none",
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 64, 32), residual: bool = False,
                 input_scale: float = 1.0, *, pretrained: bool = True):
        check_choice("encoder", encoder, tuple(ENCODER_CHANNELS))
        check_residual(residual, in_channels, out_channels, final_activation)
        check_input_scale(input_scale, residual)
        check_choice("norm", norm, NORMS)
        check_choice("scale", scale, SCALES)
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 values (strides 16, 8, 4, 2, 1), got {list(decoder_channels)}")
        super().__init__(f"unet-{encoder}", in_channels=in_channels, out_channels=out_channels, scale=scale,
                         blur=blur, self_attention=self_attention, norm=norm, weights=weights,
                         final_activation=final_activation, decoder_channels=decoder_channels, residual=residual,
                         **({"input_scale": input_scale} if input_scale != 1 else {}))
        self.scale, self.residual, self.out_channels, self.input_scale = scale, residual, out_channels, input_scale
        self.encoder = ResNetEncoder(encoder, in_channels, weights, pretrained)
        c0, c1, c2, c3, c4 = self.encoder.channels
        d = decoder_channels
        self.decoder = nn.ModuleList([
            UpBlock(c4, c3, d[0], blur, norm=norm),  # stride 32 -> 16
            UpBlock(d[0], c2, d[1], blur, self_attention, norm),  # 16 -> 8
            UpBlock(d[1], c1, d[2], blur, norm=norm),  # 8 -> 4
            UpBlock(d[2], c0, d[3], blur, norm=norm),  # 4 -> 2
            UpBlock(d[3], in_channels, d[4], blur, norm=norm),  # 2 -> 1, the skip is the input itself
        ])
        self.upscale = upscale_stages(d[4], scale, blur, norm)
        self.head = output_head(d[4], out_channels, final_activation)
        if residual:
            zero_last_conv_(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return at_input_scale(self.forward_native, x, self.input_scale, self.scale)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """The network at its working resolution, without input_scale's resize in and out (training there)."""
        inp = x  # (B, C_in, H, W)
        x, (H, W) = pad_to_multiple(x, self.stride)  # (B, C_in, H', W'), H' and W' multiples of 32
        x0, x1, x2, x3, x4 = self.encoder(x)
        y = x4  # (B, c4, H'/32, W'/32)
        for block, skip in zip(self.decoder, (x3, x2, x1, x0, x), strict=True):
            y = block(y, skip)  # ... -> (B, d4, H', W')
        y = self.upscale(y)  # (B, d4, s*H', s*W')
        y = self.head(y)  # (B, C_out, s*H', s*W')
        y = crop(y, (self.scale * H, self.scale * W))  # (B, C_out, s*H, s*W)
        return y + residual_base(inp, self.scale, self.out_channels) if self.residual else y


class PlainUNet(ConfiguredModule):
    """A small U-Net from scratch (no pretrained encoder): trains on a CPU in minutes.

    Level i (i = 0..depth) works at stride 2**i with round(base * growth**i) channels: 32, 48, 72, 108 at the
    defaults (~0.58M parameters; growth=2 is the classic U-Net, 1.9M). Max-pool down, PixelShuffle up;
    the other arguments mean what they mean for ResNetUNet (self-attention sits after the deepest decoder
    block). Input (B, in_channels, H, W), any H and W; output (B, out_channels, scale*H, scale*W).
    block='rcab': each level is a conv + ReLU and a residual channel-attention block, with no BatchNorm
    anywhere (super-resolution's choice since EDSR/RCAN; measured in bench/README.md). tail='espcn': the
    upscaling is one conv and a PixelShuffle at the input's size (`espcn_head`) instead of x2 stages of 3x3
    convs at the output's size.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, scale: int = 1, base: int = 32, depth: int = 3,
                 blur: bool = True, self_attention: bool = False, norm: Norm = "none",
                 final_activation: Literal["none", "sigmoid"] = "none", growth: float = 1.5, residual: bool = False,
                 input_scale: float = 1.0, block: Literal["conv", "rcab"] = "conv",
                 tail: Literal["stages", "espcn"] = "stages"):
        check_choice("norm", norm, NORMS)
        check_choice("tail", tail, ("stages", "espcn"))
        check_residual(residual, in_channels, out_channels, final_activation)
        check_choice("scale", scale, SCALES)
        check_input_scale(input_scale, residual)
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        super().__init__("unet-plain", in_channels=in_channels, out_channels=out_channels, scale=scale, base=base,
                         depth=depth, growth=growth, blur=blur, self_attention=self_attention, norm=norm,
                         final_activation=final_activation, residual=residual,
                         **({"input_scale": input_scale} if input_scale != 1 else {}),
                         **({"block": block} if block != "conv" else {}),
                         **({"tail": tail} if tail != "stages" else {}))
        self.scale, self.stride, self.residual, self.out_channels = scale, 2**depth, residual, out_channels
        self.input_scale = input_scale
        ch = [round(base * growth**i) for i in range(depth + 1)]
        self.stem = nn.Sequential(*conv_pair(in_channels, ch[0], norm, block))
        self.down = nn.ModuleList([nn.Sequential(nn.MaxPool2d(2), *conv_pair(ch[i], ch[i + 1], norm, block))
                                   for i in range(depth)])
        self.up = nn.ModuleList([
            UpBlock(ch[i + 1], ch[i], ch[i], blur, self_attention and i == depth - 1, norm, block)
            for i in reversed(range(depth))
        ])
        if tail == "espcn":
            self.upscale = nn.Identity()
            self.head = espcn_head(ch[0], out_channels, scale, final_activation)
        else:
            self.upscale = upscale_stages(ch[0], scale, blur, norm, block)
            self.head = output_head(ch[0], out_channels, final_activation)
        if residual:
            zero_last_conv_(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return at_input_scale(self.forward_native, x, self.input_scale, self.scale)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """The network at its working resolution, without input_scale's resize in and out (training there)."""
        inp = x  # (B, C_in, H, W)
        x, (H, W) = pad_to_multiple(x, self.stride)  # (B, C_in, H', W'), multiples of 2**depth
        skips = [self.stem(x)]  # (B, base, H', W')
        for down in self.down:
            skips.append(down(skips[-1]))  # level i: (B, ch[i], H'/2**i, W'/2**i)
        y = skips.pop()  # the deepest level
        for up in self.up:
            y = up(y, skips.pop())  # one level up
        y = self.upscale(y)  # (B, base, s*H', s*W')
        y = self.head(y)  # (B, C_out, s*H', s*W')
        y = crop(y, (self.scale * H, self.scale * W))  # (B, C_out, s*H, s*W)
        return y + residual_base(inp, self.scale, self.out_channels) if self.residual else y


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Switch the model to eval mode and run it on x (moved to the model's device) without autograd."""
    model.eval()
    device = next(model.parameters()).device
    return model(x.to(device))
