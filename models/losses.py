"""Training losses for the restoration U-Nets: L1, Charbonnier, SSIM and fastai lesson 7's feature loss,
and `SegmentationLoss` (cross-entropy, optional Dice and focal terms) for segmentation U-Nets.

Every restoration loss takes `(pred, target)`, both `(B, C, H, W)` float tensors with pixel values in [0, 1],
and returns a scalar. `build_loss(name, **kwargs)` makes one from the training config. `SegmentationLoss`
takes `(logits (B, K, H, W), target (B, H, W) class indices)`.

The feature (perceptual) loss needs pretrained VGG16-bn weights. They are never downloaded behind the
user's back: `FeatureLoss` looks in the torch hub cache (`torch.hub.get_dir()/checkpoints/`), or takes a
path or an explicit URL (`feature_weights:` in the training config). When none is found it raises
`FeatureWeightsMissing`, whose message says which file to put where, so training stops before its first
step instead of training against random features.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VGG16_BN_Weights
from torchvision.models.vgg import cfgs, make_layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGG16_BN_URL = VGG16_BN_Weights.IMAGENET1K_V1.url
VGG16_BN_FILE = os.path.basename(urlparse(VGG16_BN_URL).path)  # "vgg16_bn-6c64b313.pth"


class FeatureWeightsMissing(RuntimeError):
    """The pretrained VGG16-bn weights for the feature loss are not available (and won't be downloaded)."""


# ---------------------------------------------------------------------------------------------- pixel losses


class CharbonnierLoss(nn.Module):
    """mean(sqrt((pred - target)^2 + eps^2)): a smooth L1 that is differentiable at 0."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = pred - target
        return torch.sqrt(diff * diff + self.eps**2).mean()


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """(size, size) Gaussian weights summing to 1 (the 11x11, sigma 1.5 window of Wang et al. 2004)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


class SSIMLoss(nn.Module):
    """1 - SSIM, averaged over pixels, channels and the batch; inputs in [0, 1].

    Per channel (depthwise) Gaussian window, 'valid' filtering (no padding) like tasks.metrics.ssim,
    C1 = 0.01^2, C2 = 0.03^2 for a data range of 1. Computed in float32 even under autocast.
    Images must be at least `window` pixels on each side.
    """

    def __init__(self, window: int = 11, sigma: float = 1.5):
        super().__init__()
        self.window = window
        self.register_buffer("kernel", _gaussian_window(window, sigma).float()[None, None], persistent=False)

    def ssim(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean SSIM per image, shape (B,)."""
        if pred.shape != target.shape:
            raise ValueError(f"SSIM needs equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
        if min(pred.shape[-2:]) < self.window:
            raise ValueError(f"SSIM needs images of at least {self.window}x{self.window}, got {tuple(pred.shape)}")
        x, y = pred.float(), target.float()
        c = x.shape[1]
        kernel = self.kernel.to(x.device).expand(c, 1, -1, -1)  # (C, 1, k, k) depthwise

        def filt(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(t, kernel, groups=c)

        with torch.autocast(device_type=x.device.type, enabled=False):
            mu_x, mu_y = filt(x), filt(y)
            sxx = filt(x * x) - mu_x * mu_x
            syy = filt(y * y) - mu_y * mu_y
            sxy = filt(x * y) - mu_x * mu_y
            c1, c2 = 0.01**2, 0.03**2
            s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2))
        return s.mean(dim=(1, 2, 3))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1 - self.ssim(pred, target).mean()


class L1SSIMLoss(nn.Module):
    """L1 + ssim_weight * (1 - SSIM)."""

    def __init__(self, ssim_weight: float = 1.0, window: int = 11):
        super().__init__()
        self.ssim_weight = ssim_weight
        self.l1 = nn.L1Loss()
        self.ssim = SSIMLoss(window)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.l1(pred, target) + self.ssim_weight * self.ssim(pred, target)


# -------------------------------------------------------------------------------------------- feature loss


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C): channel correlations divided by C*H*W, as in fastai lesson 7."""
    b, c, h, w = x.shape
    f = x.reshape(b, c, h * w)
    return (f @ f.transpose(1, 2)) / (c * h * w)


def _is_url(s: str) -> bool:
    return urlparse(s).scheme in ("http", "https", "ftp", "s3", "gs")


def _missing_message(where: str) -> str:
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"VGG16-bn weights for the feature loss not found ({where}). Nothing is downloaded implicitly. "
        f"Provide them one of these ways: (1) put the torchvision file {VGG16_BN_FILE} (from {VGG16_BN_URL}) "
        f"in {hub_dir}/ (set TORCH_HOME to use another cache); (2) give a local copy in the training config "
        f"with `feature_weights: /path/vgg16_bn.pth` (a torchvision vgg16_bn state_dict); or (3) give "
        f"`feature_weights: {VGG16_BN_URL}` to download it explicitly."
    )


def load_vgg16_bn_state(weights: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    """The state_dict of `vgg16_bn().features` (keys like "0.weight") from the cache, a path or a URL.

    Accepts a full torchvision vgg16_bn state_dict ("features.0.weight", "classifier.*" ignored) or the
    state_dict of `.features` alone. Raises FeatureWeightsMissing when the file is not there.
    """
    if weights is None:
        path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_BN_FILE
        if not path.is_file():
            raise FeatureWeightsMissing(_missing_message(f"no {path}"))
        state = torch.load(path, map_location="cpu", weights_only=True)
    elif _is_url(str(weights)):
        # Explicitly asked for: the only place this module touches the network.
        state = torch.hub.load_state_dict_from_url(str(weights), map_location="cpu", progress=False, weights_only=True)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FeatureWeightsMissing(_missing_message(f"feature_weights path {path} does not exist"))
        state = torch.load(path, map_location="cpu", weights_only=True)
    if any(k.startswith("features.") for k in state):
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    return state


class FeatureLoss(nn.Module):
    """fastai lesson 7's perceptual loss: pixel L1 + VGG16-bn feature L1 + Gram-matrix (style) L1.

        loss = L1(x, y) + sum_i w_i * L1(f_i(x), f_i(y)) + sum_i w_i^2 * gram_weight * L1(G(f_i(x)), G(f_i(y)))

    where x, y are the prediction and target ImageNet-normalised (inputs are in [0, 1]; one-channel inputs
    are repeated to three), f_i are the ReLU outputs just before VGG16-bn's max-pool layers (indices
    5, 12, 22, 32, 42 of `vgg16_bn().features`), `layers` picks among those (the course's `blocks[2:5]`
    = (2, 3, 4)), and G is `gram_matrix`. Defaults are the course's: weights (5, 15, 2), gram_weight 5e3.
    As in the course (whose data were ImageNet-normalised) the pixel L1 is taken on the normalised tensors.

    The VGG is frozen (no grad, always eval mode) and left out of this module's state_dict, so it is never
    saved with a checkpoint; it still moves with `.to(device)`. `self.metrics` holds the last call's terms
    (pixel, feat_i, gram_i) detached, for logging.

    weights: None -> torchvision's file in the torch hub cache; a path; or a URL (downloaded because asked).
    allow_random: tests only; random VGG weights (with a warning) instead of FeatureWeightsMissing.
    """

    def __init__(
        self,
        layer_weights: Sequence[float] = (5, 15, 2),
        layers: Sequence[int] = (2, 3, 4),
        gram_weight: float = 5e3,
        weights: str | os.PathLike | None = None,
        allow_random: bool = False,
    ):
        super().__init__()
        if len(layer_weights) != len(layers):
            raise ValueError(f"layer_weights {tuple(layer_weights)} and layers {tuple(layers)} differ in length")
        try:
            state = load_vgg16_bn_state(weights)
        except FeatureWeightsMissing:
            if not allow_random:
                raise
            warnings.warn("FeatureLoss uses RANDOM VGG16-bn weights (allow_random=True): tests only", stacklevel=2)
            state = None
        features = make_layers(cfgs["D"], batch_norm=True)  # == vgg16_bn().features, without the classifier
        pre_pool = [i - 1 for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]  # [5, 12, 22, 32, 42]
        if not layers or any(not 0 <= i < len(pre_pool) for i in layers):
            raise ValueError(f"layers must index the {len(pre_pool)} pre-pool blocks (0..4), got {tuple(layers)}")
        if state is not None:
            features.load_state_dict(state)
        self.layer_ids = [pre_pool[i] for i in layers]
        self.layer_weights = [float(w) for w in layer_weights]
        self.gram_weight = float(gram_weight)
        self.features = features[: max(self.layer_ids) + 1].eval().requires_grad_(False)
        # (torchvision's in-place ReLUs are safe here: each collected activation feeds a MaxPool, not in place)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_state_dict_post_hook(_drop_features_from_state_dict)
        self.register_load_state_dict_post_hook(_ignore_missing_features)
        self.metric_names = (
            ["pixel"] + [f"feat_{i}" for i in range(len(layers))] + [f"gram_{i}" for i in range(len(layers))]
        )
        self.metrics: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> FeatureLoss:
        super().train(mode)
        self.features.eval()  # BatchNorm statistics stay the pretrained ones
        return self

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, wanted = [], set(self.layer_ids)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out.append(x)
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, y = self._normalise(pred), self._normalise(target)
        with torch.no_grad():
            y_feats = self._activations(y)
        x_feats = self._activations(x)
        terms = [F.l1_loss(x, y)]
        terms += [F.l1_loss(fx, fy) * w for fx, fy, w in zip(x_feats, y_feats, self.layer_weights, strict=True)]
        terms += [
            F.l1_loss(gram_matrix(fx.float()), gram_matrix(fy.float())) * w**2 * self.gram_weight
            for fx, fy, w in zip(x_feats, y_feats, self.layer_weights, strict=True)
        ]
        self.metrics = {name: t.detach() for name, t in zip(self.metric_names, terms, strict=True)}
        return sum(terms)


def _drop_features_from_state_dict(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "features.")]:
        del state_dict[key]


def _ignore_missing_features(module, incompatible_keys) -> None:
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if k.split(".")[0] != "features" and ".features." not in k]


# ------------------------------------------------------------------------------------------- segmentation


class SegmentationLoss(nn.Module):
    """Cross-entropy on class logits, + `dice` x soft Dice loss; `focal_gamma` > 0 makes the CE focal.

    logits (B, K, H, W), target (B, H, W) int64 class indices. Pixels labelled `ignore_index` (a class of the
    map or a value past it, like 255) count nowhere: not in the CE, not in the Dice sums. `weight` (K,) weights
    each pixel's CE by its target class (median-frequency balancing) and, as in PyTorch, the CE is the
    weighted mean over the counted pixels; a batch with no counted pixel gives 0, not PyTorch's NaN.
    Focal (Lin et al. 2017): each pixel's CE is scaled by (1 - p_target)**gamma, so pixels the model already
    gets right stop dominating. Dice: 1 - mean over the classes present in the batch's targets of
    2 |P.Y| / (|P| + |Y|) with P the softmax, over all the batch's counted pixels; it ignores `weight`.
    Computed in float32 whatever the logits' dtype. `self.metrics` holds the last call's terms, detached.
    """

    def __init__(self, weight: torch.Tensor | Sequence[float] | None = None, ignore_index: int | None = None,
                 dice: float = 0.0, focal_gamma: float = 0.0, eps: float = 1e-6):
        super().__init__()
        if dice < 0 or focal_gamma < 0:
            raise ValueError(f"dice and focal_gamma must be >= 0, got {dice}, {focal_gamma}")
        self.ignore_index, self.dice, self.focal_gamma, self.eps = ignore_index, float(dice), float(focal_gamma), eps
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32),
                             persistent=False)
        self.metrics: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"expected logits (B, K, H, W) and target (B, H, W), got {tuple(logits.shape)} and "
                             f"{tuple(target.shape)}")
        k = logits.shape[1]
        if self.weight is not None and self.weight.numel() != k:
            raise ValueError(f"weight has {self.weight.numel()} values for {k} classes")
        logp = F.log_softmax(logits.float(), dim=1)  # (B, K, H, W)
        valid = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=bool)
        t = target.where(valid, 0)  # (B, H, W), ignored pixels point at class 0, then weigh nothing
        logp_t = logp.gather(1, t.unsqueeze(1)).squeeze(1)  # (B, H, W)
        nll = -logp_t
        if self.focal_gamma:
            nll = (1 - logp_t.exp()).clamp(min=0).pow(self.focal_gamma) * nll
        w = valid.float() if self.weight is None else self.weight[t] * valid  # (B, H, W)
        loss = (w * nll).sum() / w.sum().clamp(min=self.eps)
        self.metrics = {"ce": loss.detach()}
        if self.dice:
            dice = self.dice_loss(logp.exp(), t, valid)
            self.metrics["dice"] = dice.detach()
            loss = loss + self.dice * dice
        return loss

    def dice_loss(self, probs: torch.Tensor, t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """1 - mean soft Dice of the classes present in the counted targets (0 when there are none)."""
        k = probs.shape[1]
        m = valid.unsqueeze(1).float()  # (B, 1, H, W)
        onehot = F.one_hot(t, k).permute(0, 3, 1, 2).float() * m  # (B, K, H, W)
        p = probs * m
        inter = (p * onehot).sum(dim=(0, 2, 3))  # (K,)
        card = p.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))  # (K,)
        present = onehot.sum(dim=(0, 2, 3)) > 0  # (K,)
        dice = (2 * inter + self.eps) / (card + self.eps)  # (K,)
        return ((1 - dice) * present).sum() / present.sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------- registry

LossName = Literal["l1", "charbonnier", "feature", "ssim", "l1+ssim"]

LOSSES: dict[str, type[nn.Module]] = {
    "l1": nn.L1Loss,
    "charbonnier": CharbonnierLoss,
    "feature": FeatureLoss,
    "ssim": SSIMLoss,
    "l1+ssim": L1SSIMLoss,
}


def build_loss(name: LossName, **kwargs) -> nn.Module:
    """The loss called `name`, built with `kwargs` (e.g. build_loss("feature", weights="/path/vgg16_bn.pth"))."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}") from None
    return cls(**kwargs)


__all__ = [
    "CharbonnierLoss",
    "FeatureLoss",
    "FeatureWeightsMissing",
    "L1SSIMLoss",
    "SSIMLoss",
    "SegmentationLoss",
    "build_loss",
    "gram_matrix",
    "load_vgg16_bn_state",
    "LOSSES",
    "VGG16_BN_FILE",
    "VGG16_BN_URL",
]
