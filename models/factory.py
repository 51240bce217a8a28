"""One factory for every model: `build_model({"arch": name, **kwargs})`, the inverse of `model.config`.

    >>> model = build_model({"arch": "unet-resnet34", "scale": 2})
    >>> build_model(model.config)  # the same architecture again
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from torch import nn

from pixelmill.models.baseline import BicubicColour
from pixelmill.models.critic import Critic
from pixelmill.models.smp_net import SmpUNet
from pixelmill.models.spandrel_net import SpandrelNet
from pixelmill.models.unet import PlainUNet, ResNetUNet

# Constructor keywords that are not configuration (they change how weights are initialised, not the model).
NOT_CONFIG = ("pretrained",)


@dataclass(frozen=True)
class Arch:
    """A registered architecture: the class and the constructor arguments its name fixes."""

    cls: type[nn.Module]
    fixed: dict = field(default_factory=dict)

    def kwargs(self) -> list[str]:
        """The keyword arguments a config may set."""
        params = inspect.signature(self.cls).parameters
        return [name for name in params if name not in self.fixed and name not in NOT_CONFIG]


ARCHS: dict[str, Arch] = {
    "unet-resnet18": Arch(ResNetUNet, {"encoder": "resnet18"}),
    "unet-resnet34": Arch(ResNetUNet, {"encoder": "resnet34"}),
    "unet-resnet50": Arch(ResNetUNet, {"encoder": "resnet50"}),
    "unet-plain": Arch(PlainUNet),
    "bicubic": Arch(BicubicColour),
    "critic": Arch(Critic),
    "spandrel": Arch(SpandrelNet),  # a model trained elsewhere (`pixelmill models import`)
    # segmentation_models.pytorch encoders (models/smp_net.ENCODERS)
    "smp-unet-resnet34": Arch(SmpUNet, {"encoder": "resnet34"}),
    "smp-unet-efficientnet-b0": Arch(SmpUNet, {"encoder": "efficientnet-b0"}),
    "smp-unet-mobilenet_v2": Arch(SmpUNet, {"encoder": "mobilenet_v2"}),
}


def list_archs() -> list[str]:
    """Names `build_model` accepts as config["arch"]."""
    return list(ARCHS)


def build_model(config: dict, *, pretrained: bool = True) -> nn.Module:
    """Build the model that `config` = {"arch": name, **constructor kwargs} describes.

    pretrained=False skips loading pretrained encoder weights (use it when a checkpoint overwrites them).
    Raises ValueError for an unknown arch or keyword argument, listing the valid ones.
    """
    config = dict(config)
    name = config.pop("arch", None)
    if name not in ARCHS:
        raise ValueError(f"unknown arch {name!r}; valid: {', '.join(ARCHS)}")
    arch = ARCHS[name]
    valid = arch.kwargs()
    unknown = [k for k in config if k not in valid]
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(map(repr, unknown))} for arch {name!r}; "
                         f"valid: {', '.join(valid)}")
    extra = {"pretrained": pretrained} if "pretrained" in inspect.signature(arch.cls).parameters else {}
    return arch.cls(**arch.fixed, **config, **extra)
