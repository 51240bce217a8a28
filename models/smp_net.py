"""U-Nets on the pretrained-capable encoders of segmentation_models.pytorch (smp): "smp-unet-resnet34",
"smp-unet-efficientnet-b0", "smp-unet-mobilenet_v2" in the factory.

- `SmpUNet`: smp's Unet with pixelmill's conventions: any input size (reflect-padded to the encoder's stride 32,
  cropped back), input_scale, residual, final_activation, a JSON `config` that `build_model` rebuilds.
- `cached_weight_files`: where the encoder's ImageNet weights are when smp or torchvision has downloaded them.

smp itself always gets encoder_weights=None, so building a model never touches the network. The encoder's
ImageNet weights are read from a cache when they are there: smp's own download (the Hugging Face hub cache,
repo smp-hub/<encoder>.imagenet at the revision this smp pins, or any other revision of it) and, for encoders
that are torchvision's classes with its key names (ResNets, MobileNetV2), torchvision's file in the torch hub
cache, the same file unet-resnet34 reads. Otherwise the encoder starts from random weights, and one log line
says where the file would go. The images are normalised with ImageNet's mean and std inside the model, as
pretrained encoders expect; callers keep passing [0, 1] pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from pixelmill.models.blocks import ConfiguredModule, crop, pad_to_multiple
from pixelmill.models.losses import IMAGENET_MEAN, IMAGENET_STD
from pixelmill.models.unet import (
    at_input_scale,
    check_input_scale,
    check_residual,
    imagenet_cache_path,
    residual_base,
    zero_last_conv_,
)

log = logging.getLogger("pixelmill.models")

HF_WEIGHTS_FILE = "model.safetensors"  # what smp downloads from its smp-hub repos


@dataclass(frozen=True)
class EncoderInfo:
    torchvision: str | None  # the torchvision model whose ImageNet file fits this encoder (same class and keys)
    unused: tuple[str, ...]  # classifier modules a U-Net never runs: removed, and skipped in weight files


ENCODERS: dict[str, EncoderInfo] = {
    "resnet34": EncoderInfo("resnet34", ("fc.",)),
    "efficientnet-b0": EncoderInfo(None, ("_fc.", "_conv_head.", "_bn1.")),
    "mobilenet_v2": EncoderInfo("mobilenet_v2", ("classifier.",)),
}


def cached_weight_files(encoder: str) -> list[Path]:
    """The files that would hold the encoder's ImageNet weights, best first (they need not exist): smp's
    download at its pinned revision, then torchvision's file (ResNets, MobileNetV2 only)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders[encoder]["pretrained_settings"]["imagenet"]
    repo = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=settings["repo_id"], repo_type="model")
    files = [repo / "snapshots" / settings["revision"] / HF_WEIGHTS_FILE]
    tv = ENCODERS[encoder].torchvision
    return files + [imagenet_cache_path(tv)] if tv else files


def find_cached_weights(encoder: str) -> Path | None:
    """The first cached weights file that exists; another revision of smp's repo counts too (the same weights,
    downloaded by another smp release)."""
    files = cached_weight_files(encoder)
    found = [f for f in files if f.is_file()]
    if not found:
        found = sorted(files[0].parent.parent.glob(f"*/{HF_WEIGHTS_FILE}"))
    return found[0] if found else None


def missing_weights_message(encoder: str) -> str:
    """One line: the encoder is random, and where its ImageNet weights would be read from."""
    from segmentation_models_pytorch.encoders import encoders

    repo = encoders[encoder]["pretrained_settings"]["imagenet"]["repo_id"]
    files = cached_weight_files(encoder)
    where = f"huggingface.co/{repo}'s {HF_WEIGHTS_FILE} at {files[0]}"
    if len(files) > 1:
        where += f", or torchvision's {ENCODERS[encoder].torchvision} ImageNet weights at {files[1]}"
    return (f"smp-unet-{encoder}: the encoder starts from random weights, none are cached and nothing is "
            f"downloaded; for ImageNet's, put {where}, or pass arch_kwargs weights=FILE ('random' to silence this)")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file, or a torch.save file (weights_only: no pickled code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, another format, pickled objects
        raise ValueError(f"encoder weights {str(path)!r} cannot be read as a state dict: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"encoder weights {str(path)!r} are not a state dict (name -> tensor)")
    return state


def load_encoder_weights(encoder: nn.Module, name: str, path: Path) -> None:
    """Fill the smp encoder from `path`: an encoder state dict (smp's or torchvision's keys, classifier included
    or not) or a whole smp model's (its encoder.* entries). ValueError naming the file when it does not fit."""
    state = read_state_dict(path)
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    state = {k: v for k, v in state.items() if not k.startswith(ENCODERS[name].unused)}
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(f"encoder weights {str(path)!r} do not fit {name}: {len(missing)} missing keys {missing[:3]}, "
                         f"{len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} of another shape {wrong[:3]}")
    encoder.load_state_dict(state)


class SmpUNet(ConfiguredModule):
    """segmentation_models.pytorch's Unet on an smp encoder, for segmentation (and restoration at scale 1).

    encoder: one of ENCODERS (fixed by the arch name). in_channels: 3, or another count (the first conv's
    pretrained kernels summed over RGB for 1, cycled for more, as smp does). out_channels: the classes, or 3
    for an image. scale: 1 only (no super-resolution tail: use unet-resnet* for that). decoder_channels: the five
    decoder stages at strides 16, 8, 4, 2, 1. final_activation, residual, input_scale: as for ResNetUNet.
    weights: None = ImageNet weights from the caches (`cached_weight_files`) if there, never downloaded;
    'random'; or a local state-dict file (.safetensors or torch.save). pretrained=False skips loading them (a
    checkpoint will overwrite them); it is not part of `config`.

    Input (B, in_channels, H, W) in [0, 1], any H and W; output (B, out_channels, H, W). With batch size 1 in
    train mode the input must be at least 33 px a side (BatchNorm needs more than one value at stride 32).
    """

    def __init__(self, encoder: str, in_channels: int = 3, out_channels: int = 3, scale: int = 1,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
                 final_activation: Literal["none", "sigmoid"] = "none", residual: bool = False,
                 input_scale: float = 1.0, weights: str | None = None, *, pretrained: bool = True):
        if encoder not in ENCODERS:
            raise ValueError(f"encoder={encoder!r} is not valid; choose one of {list(ENCODERS)}")
        if scale != 1:
            raise ValueError(f"smp-unet-{encoder} works at scale 1 (segmentation, restoration), got scale={scale}; "
                             "for super-resolution use unet-resnet34 or unet-plain")
        if final_activation not in ("none", "sigmoid"):
            raise ValueError(f"final_activation={final_activation!r} is not valid; choose one of ['none', 'sigmoid']")
        check_residual(residual, in_channels, out_channels, final_activation)
        check_input_scale(input_scale, residual)
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 values (strides 16, 8, 4, 2, 1), got {list(decoder_channels)}")
        super().__init__(f"smp-unet-{encoder}", in_channels=in_channels, out_channels=out_channels, scale=scale,
                         decoder_channels=decoder_channels, final_activation=final_activation, residual=residual,
                         weights=weights, **({"input_scale": input_scale} if input_scale != 1 else {}))
        # imported here: timm and huggingface_hub cost a second, which every other arch need not pay
        import segmentation_models_pytorch as smp

        # built for RGB so that RGB weights fit; the first conv is adapted to in_channels once they are loaded
        self.net = smp.Unet(encoder, encoder_weights=None, in_channels=3, classes=out_channels,
                            decoder_channels=tuple(decoder_channels),
                            activation="sigmoid" if final_activation == "sigmoid" else None)
        for prefix in ENCODERS[encoder].unused:  # no gradient would ever reach them
            if hasattr(self.net.encoder, prefix.rstrip(".")):
                delattr(self.net.encoder, prefix.rstrip("."))
        self.weights_source: str | None = None  # where the loaded weights came from, for logs
        if pretrained and weights != "random":
            path = Path(weights).expanduser() if weights is not None else find_cached_weights(encoder)
            if weights is not None and not path.is_file():
                raise FileNotFoundError(f"encoder weights file {weights!r} does not exist (give a local file, "
                                        "'random', or None for the caches)")
            if path is None:
                log.warning(missing_weights_message(encoder))
            else:
                load_encoder_weights(self.net.encoder, encoder, path)
                self.weights_source = str(path)
        self.net.encoder.set_in_channels(in_channels, pretrained=self.weights_source is not None)
        self.stride = self.net.encoder.output_stride  # 32: inputs are padded to a multiple of it
        self.scale, self.residual, self.out_channels, self.input_scale = scale, residual, out_channels, input_scale
        if residual:
            zero_last_conv_(self.net.segmentation_head)
        # not in the state dict: fixed, and checkpoints keep only the weights
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        if in_channels == 1:  # grey: the kernels are summed over RGB, so one mean and std for all three
            mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
        channels = torch.arange(in_channels) % len(mean)
        self.register_buffer("mean", mean[channels].view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std[channels].view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return at_input_scale(self.forward_native, x, self.input_scale, self.scale)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """The network at its working resolution, without input_scale's resize in and out (training there)."""
        inp = x  # (B, C_in, H, W)
        x, (H, W) = pad_to_multiple(x, self.stride)  # (B, C_in, H', W'), multiples of 32
        y = self.net((x - self.mean) / self.std)  # (B, C_out, H', W')
        y = crop(y, (H, W))  # (B, C_out, H, W)
        return y + residual_base(inp, 1, self.out_channels) if self.residual else y
