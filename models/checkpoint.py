"""The model registry format: safetensors weights (no pickle) + a JSON-able config that rebuilds the model.

This module works on bytes only; where the files live (local disk, s3://, memory://) is the caller's business.
The weights file also carries the config in its safetensors metadata, so it can be rebuilt from the file alone,
and the same model always gives the same bytes (content hashes are stable).
"""

from __future__ import annotations

import json

import safetensors.torch
from torch import nn

from pixelmill.models.factory import build_model

FORMAT = "pixelmill-model/1"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile (`_orig_mod`) and DataParallel / DistributedDataParallel (`module`)."""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def save_model_bytes(model: nn.Module) -> tuple[bytes, dict]:
    """Serialize a model built by the factory (compiled or DDP-wrapped is fine): (safetensors bytes of its state
    dict, its config dict)."""
    model = unwrap(model)
    if not isinstance(getattr(model, "config", None), dict):
        raise ValueError(f"{type(model).__name__} has no config: build it with models.factory.build_model")
    config = model.config
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    # one metadata key: safetensors writes several in a random (hash map) order, and the bytes must be deterministic
    metadata = {"pixelmill": json.dumps({"format": FORMAT, "config": config}, sort_keys=True)}
    return safetensors.torch.save(state, metadata=metadata), config


def read_config(weights_bytes: bytes) -> dict:
    """The config stored in a weights file's metadata."""
    # safetensors layout: 8-byte little-endian header length, then the JSON header (with "__metadata__")
    header_len = int.from_bytes(weights_bytes[:8], "little")
    if len(weights_bytes) < 8 + header_len:
        raise ValueError("not a safetensors file: the header is longer than the data")
    header = json.loads(weights_bytes[8 : 8 + header_len])
    meta = header.get("__metadata__") or {}
    if "pixelmill" not in meta:
        raise ValueError("these weights carry no pixelmill config; pass the config explicitly")
    return json.loads(meta["pixelmill"])["config"]


def load_model_from_bytes(weights_bytes: bytes, config: dict | None = None) -> nn.Module:
    """Rebuild the model from `config` (default: the one stored in the file) and load the weights, strictly.

    Returns the model in eval mode on the CPU. Raises ValueError when the weights do not fit the config.
    """
    config = read_config(weights_bytes) if config is None else config
    model = build_model(config, pretrained=False)  # the checkpoint overwrites every weight anyway
    state = safetensors.torch.load(weights_bytes)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                   if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"checkpoint does not fit config {config}: {len(missing)} missing keys {missing[:5]}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:5]}, {len(wrong_shape)} shapes differ "
                         f"(checkpoint != model) {wrong_shape[:5]}")
    model.load_state_dict(state, strict=True)
    return model.eval()
