"""Where a model runs and how images cross into and out of tensors: shared by training and inference."""

from __future__ import annotations

import numpy as np
import torch

from pixelmill.models.errors import DeviceError


def pick_device(name: str = "auto") -> torch.device:
    """The config's device choice made concrete: 'auto' is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asked for, but torch sees no CUDA device", "use device: auto or cpu")
    return torch.device(name)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 -> (C, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, 3) uint8, rounding like saving a PNG would."""
    arr = t.detach().float().clamp(0, 1).mul(255).round().byte().cpu().numpy().transpose(1, 2, 0)
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr
