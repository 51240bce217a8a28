"""The registry format: safetensors bytes (no pickle) + a JSON config; a mismatch is a clear ValueError."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from pixelmill.models.checkpoint import load_model_from_bytes, read_config, save_model_bytes
from pixelmill.models.factory import build_model

SMALL = {"arch": "unet-plain", "base": 8, "depth": 2}




def trained_a_little(config: dict) -> torch.nn.Module:
    """A model whose BatchNorm statistics and weights moved away from their init."""
    torch.manual_seed(0)
    model = build_model(config)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 3, 16, 16)).pow(2).mean().backward()
        opt.step()
    return model.eval()


def test_round_trip_keeps_weights_buffers_and_config():
    model = trained_a_little(SMALL)
    weights, config = save_model_bytes(model)
    assert isinstance(weights, bytes) and config == model.config
    json.dumps(config)
    loaded = load_model_from_bytes(weights, config)
    assert not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randn(1, 3, 21, 19)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_weights_are_plain_safetensors_with_the_config_inside():
    model = build_model(SMALL)
    weights, config = save_model_bytes(model)
    tensors = safetensors.torch.load(weights)  # no pickle involved
    assert set(tensors) == set(model.state_dict())
    assert read_config(weights) == config
    loaded = load_model_from_bytes(weights)  # the config from the file itself
    assert loaded.config == config


def test_weights_that_do_not_fit_the_config_raise_value_error():
    weights, _ = save_model_bytes(build_model(SMALL))
    with pytest.raises(ValueError, match=r"does not fit.* 0 missing keys .* shapes differ .*stem\.0\.0"):
        load_model_from_bytes(weights, {**SMALL, "base": 16})  # same keys, other shapes
    with pytest.raises(ValueError, match=r"does not fit.*missing keys \['down\.2"):  # other keys
        load_model_from_bytes(weights, {**SMALL, "depth": 3})
    with pytest.raises(ValueError, match="unknown arch"):
        load_model_from_bytes(weights, {"arch": "nope"})


def test_a_file_without_config_needs_one():
    weights = safetensors.torch.save({"w": torch.zeros(1)})
    with pytest.raises(ValueError, match="no pixelmill config"):
        load_model_from_bytes(weights)


def test_the_same_model_gives_the_same_bytes_wrapped_or_not():
    model = build_model(SMALL)
    first = save_model_bytes(model)
    assert all(save_model_bytes(model) == first for _ in range(5))
    assert save_model_bytes(torch.nn.DataParallel(model)) == first
    with pytest.raises(ValueError, match="has no config"):
        save_model_bytes(torch.nn.Conv2d(1, 1, 1))
