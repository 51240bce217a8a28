"""Models trained elsewhere, as one factory arch: "spandrel" runs any image-to-image architecture that spandrel
detects from a checkpoint's tensors (ESRGAN / Real-ESRGAN, Compact, SwinIR, HAT, DAT, SPAN, ...).

    desc = detect(state_dict)                    # spandrel's descriptor: architecture, scale, channels, sizes
    net = SpandrelNet(**spandrel_config(desc))   # the same architecture from JSON alone (random weights)
    net.net.load_state_dict(desc.model.state_dict())

The config names spandrel's architecture id, the model class and the constructor arguments spandrel detected
(those that differ from the class's defaults), so `build_model(net.config)` rebuilds the network without the
original file; spandrel then detects it once more (from the fresh tensors' shapes) for what is not a constructor
argument: how to call it, its size requirements, whether it runs in half precision. Inputs and outputs are
(B, 3, H, W) RGB in [0, 1] (spandrel's convention, pixelmill's too); any H and W: the input is padded to what the
architecture needs (reflect, like spandrel's own call) and the output cropped back to scale x the input.
"""

from __future__ import annotations

import importlib
import inspect
import json

import torch
import torch.nn.functional as F
from spandrel import MAIN_REGISTRY, ImageModelDescriptor, ModelDescriptor, StateDict

from pixelmill.models.blocks import ConfiguredModule

# the class path a config may name: spandrel's own architectures, nothing else is imported from a config file
CLASS_PREFIX = "spandrel.architectures."
PURPOSES = ("SR", "Restoration")  # image in, image out; FaceSR wants aligned face crops, Inpainting a mask


def detect(state_dict: StateDict) -> ModelDescriptor:
    """spandrel's descriptor of a state dict; spandrel.UnsupportedModelError when no architecture matches."""
    return MAIN_REGISTRY.load(state_dict)


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def stored_hyperparameters(model: torch.nn.Module) -> dict:
    """The constructor arguments spandrel detected that differ from the class's defaults, as JSON.

    Defaults stay out: they are what the class does anyway, and some are not JSON (SwinIR's norm_layer class).
    Raises ValueError for a non-default argument JSON cannot hold."""
    defaults = {name: p.default for name, p in inspect.signature(type(model).__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    out = {}
    for name, value in getattr(model, "hyperparameters", {}).items():
        if name in defaults and _same(value, defaults[name]):
            continue
        try:
            out[name] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            raise ValueError(f"{type(model).__name__} argument {name}={value!r} cannot be stored as JSON") from None
    return out


def _same(a: object, b: object) -> bool:
    try:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    except (TypeError, ValueError):
        return a is b or a == b


def spandrel_config(desc: ModelDescriptor) -> dict:
    """SpandrelNet's constructor arguments for the architecture `desc` describes."""
    return {"spandrel_arch": str(desc.architecture.id), "model_class": class_path(type(desc.model)),
            "hyperparameters": stored_hyperparameters(desc.model), "scale": desc.scale,
            "in_channels": desc.input_channels, "out_channels": desc.output_channels}


def describe(desc: ModelDescriptor) -> dict:
    """What spandrel says of a model beyond its constructor arguments, JSON-able (for the model card)."""
    req = desc.size_requirements
    return {"architecture": str(desc.architecture.id), "name": desc.architecture.name, "purpose": desc.purpose,
            "tags": list(desc.tags), "supports_half": desc.supports_half, "tiling": desc.tiling.name.lower(),
            "size_requirements": {"minimum": req.minimum, "multiple_of": req.multiple_of, "square": req.square}}


def _model_class(path: str) -> type[torch.nn.Module]:
    module, _, name = path.partition(":")
    if not module.startswith(CLASS_PREFIX):
        raise ValueError(f"model_class {path!r} is not one of spandrel's architectures ({CLASS_PREFIX}...)")
    cls = importlib.import_module(module)
    for part in name.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ValueError(f"model_class {path!r} is not a torch module")
    return cls


class SpandrelNet(ConfiguredModule):
    """An architecture spandrel knows, rebuilt from JSON: (B, in_channels, H, W) in [0, 1] -> (B, out_channels,
    scale*H, scale*W) in [0, 1].

    spandrel_arch: spandrel's architecture id ("ESRGAN", "SwinIR", ...). model_class: "module:Class" under
    spandrel.architectures. hyperparameters: its constructor arguments that differ from the defaults. scale,
    in_channels, out_channels: what spandrel detects for them, checked when the model is built.
    The defaults build spandrel's Compact (Real-ESRGAN's small x4 network) at its own defaults.
    """

    def __init__(self, spandrel_arch: str = "Compact",
                 model_class: str = "spandrel.architectures.Compact.__arch.SRVGG:SRVGGNetCompact",
                 hyperparameters: dict | None = None, scale: int = 4, in_channels: int = 3, out_channels: int = 3):
        hyperparameters = dict(hyperparameters or {})
        super().__init__("spandrel", spandrel_arch=spandrel_arch, model_class=model_class,
                         hyperparameters=hyperparameters, scale=scale, in_channels=in_channels,
                         out_channels=out_channels)
        support = MAIN_REGISTRY.get(spandrel_arch)
        if support is None:
            raise ValueError(f"spandrel has no architecture {spandrel_arch!r} (this version knows "
                             f"{', '.join(str(a.architecture.id) for a in MAIN_REGISTRY.architectures())})")
        fresh = _model_class(model_class)(**hyperparameters)
        desc = support.architecture.load(fresh.state_dict())  # how to call it, its size needs: spandrel's say
        got = (desc.scale, desc.input_channels, desc.output_channels)
        if not isinstance(desc, ImageModelDescriptor) or got != (scale, in_channels, out_channels):
            raise ValueError(f"{spandrel_arch} with {hyperparameters} is x{got[0]}, {got[1]} -> {got[2]} channels, "
                             f"not x{scale}, {in_channels} -> {out_channels} as the config says")
        self.net = desc.model
        self.scale, self.spandrel_arch = scale, spandrel_arch
        self.size_requirements, self.supports_half = desc.size_requirements, desc.supports_half
        self._call = desc._call_fn  # spandrel's per-architecture call (some return a tuple, some scale the input)

    def padding(self, h: int, w: int) -> tuple[int, int]:
        """(bottom, right) padding that meets the architecture's minimum size, multiple and squareness."""
        req = self.size_requirements
        H, W = max(h, req.minimum), max(w, req.minimum)
        H, W = H + (-H) % req.multiple_of, W + (-W) % req.multiple_of
        if req.square:
            H = W = max(H, W)
        return H - h, W - w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]  # (B, C_in, h, w)
        pad_h, pad_w = self.padding(h, w)
        if pad_h or pad_w:  # reflect where it can (pad < size), the rest replicated: spandrel's own rule
            reflect_h, reflect_w = min(pad_h, h - 1), min(pad_w, w - 1)
            x = F.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
            x = F.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
        if not self.supports_half and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):  # this architecture overflows in float16
                y = self._call(self.net, x.float())
        else:
            y = self._call(self.net, x)  # (B, C_out, s*(h+pad_h), s*(w+pad_w))
        return y[..., : self.scale * h, : self.scale * w].clamp(0, 1)  # (B, C_out, s*h, s*w), spandrel's range
