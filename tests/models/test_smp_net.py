"""The factory's smp-unet-* archs (segmentation_models.pytorch encoders): any input size, a config that rebuilds
them, encoder weights from a file or from smp's and torchvision's caches (written here with random tensors: no
model hub is reachable, and none is ever asked), one log line when there are none, clear errors for bad files.
The shared tester in test_models.py runs every arch at its defaults as well."""

from __future__ import annotations

import json
import logging
import re
import urllib.request

import huggingface_hub
import pytest
import safetensors.torch
import segmentation_models_pytorch as smp
import torch
import torchvision

from pixelmill.models.checkpoint import load_model_from_bytes, save_model_bytes
from pixelmill.models.factory import build_model, list_archs
from pixelmill.models.smp_net import ENCODERS, SmpUNet, cached_weight_files

SMP_ARCHS = [name for name in list_archs() if name.startswith("smp-")]
NARROW = [32, 32, 16, 16, 8]  # decoder channels: the tests need shapes and weights, not capacity


@pytest.fixture
def caches(monkeypatch, tmp_path):
    """Empty Hugging Face and torch hub caches under tmp_path, and any download attempt fails the test."""
    hf = tmp_path / "hf" / "hub"
    # huggingface_hub reads HF_HOME / HF_HUB_CACHE once, at import: set what it read
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch.hub.get_dir() reads it at every call

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    for module, name in [(huggingface_hub, "hf_hub_download"), (smp.encoders, "hf_hub_download"),
                         (torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file"),
                         (urllib.request, "urlopen")]:
        monkeypatch.setattr(module, name, refuse)
    return hf, tmp_path / "torch" / "hub"


def fake_encoder_state(encoder: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """'Pretrained' weights as smp-hub stores them: the smp encoder's own state dict, random here."""
    torch.manual_seed(seed)
    return smp.encoders.get_encoder(encoder, weights=None).state_dict()


def first_conv(model: SmpUNet) -> torch.Tensor:
    return next(m for m in model.net.encoder.modules() if isinstance(m, torch.nn.Conv2d)).weight


@pytest.mark.parametrize("arch", SMP_ARCHS)
def test_segments_any_size_and_rebuilds_from_its_config(arch, caches):
    torch.manual_seed(0)
    model = build_model({"arch": arch, "out_channels": 5, "decoder_channels": NARROW}, pretrained=False).eval()
    assert model.stride == 32 and model.scale == 1
    with torch.no_grad():
        for h, w in ((37, 53), (9, 11)):
            assert model(torch.rand(1, 3, h, w)).shape == (1, 5, h, w)
    config = json.loads(json.dumps(model.config))
    assert config["arch"] == arch and config["scale"] == 1 and config["out_channels"] == 5
    rebuilt = build_model(config, pretrained=False).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    weights, saved = save_model_bytes(model)  # the registry's format
    with torch.no_grad():
        assert torch.equal(load_model_from_bytes(weights)(x), model(x)) and saved == model.config


def test_every_parameter_trains_at_the_model_resolution(caches):
    """input_scale < 1: forward resizes in and out, forward_native is the network alone (the training flow's
    loss_resolution='model'); no parameter is left without a gradient (efficientnet's unused head is gone)."""
    model = SmpUNet("efficientnet-b0", out_channels=4, input_scale=0.5, decoder_channels=NARROW, weights="random")
    x = torch.rand(2, 3, 37, 53)
    assert model(x).shape == (2, 4, 37, 53) and model.forward_native(x).shape == (2, 4, 37, 53)
    model.forward_native(x).square().mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    assert not any(k.startswith("net.encoder._conv_head") for k in model.state_dict())


def test_residual_starts_as_the_identity_and_scale_is_one_only(caches):
    model = SmpUNet("mobilenet_v2", residual=True, decoder_channels=NARROW, weights="random").eval()
    x = torch.rand(1, 3, 35, 37)
    with torch.no_grad():
        assert torch.equal(model(x), x)
    with pytest.raises(ValueError, match="scale 1"):
        build_model({"arch": "smp-unet-resnet34", "scale": 2})
    with pytest.raises(ValueError, match="residual=True needs an image out"):
        build_model({"arch": "smp-unet-resnet34", "out_channels": 7, "residual": True})


@pytest.mark.parametrize("encoder", ["resnet34", "efficientnet-b0"])
def test_weights_from_a_file_fill_the_encoder(encoder, caches, tmp_path):
    state = fake_encoder_state(encoder)
    path = tmp_path / f"{encoder}.safetensors"
    safetensors.torch.save_file(state, path)
    model = SmpUNet(encoder, decoder_channels=NARROW, weights=str(path))
    assert model.weights_source == str(path)
    loaded = model.net.encoder.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_torchvision_files_and_whole_smp_models_fit_too(caches, tmp_path):
    torch.manual_seed(2)
    tv = torchvision.models.resnet34(weights=None).state_dict()  # fc.* included
    torch.save(tv, tmp_path / "tv.pth")
    model = SmpUNet("resnet34", in_channels=1, decoder_channels=NARROW, weights=str(tmp_path / "tv.pth"))
    assert torch.equal(model.net.encoder.layer4[2].conv2.weight, tv["layer4.2.conv2.weight"])
    assert torch.allclose(first_conv(model), tv["conv1.weight"].sum(1, keepdim=True))  # grey: RGB kernels summed
    whole = smp.Unet("resnet34", encoder_weights=None).state_dict()  # a model trained with smp itself
    torch.save(whole, tmp_path / "whole.pth")
    model = SmpUNet("resnet34", decoder_channels=NARROW, weights=str(tmp_path / "whole.pth"))
    assert torch.equal(model.net.encoder.conv1.weight, whole["encoder.conv1.weight"])


def test_weights_come_from_the_caches_when_present(caches):
    hf, torch_hub = caches
    # smp's own download: the Hugging Face snapshot of smp-hub/resnet34.imagenet at the revision smp pins
    pinned = cached_weight_files("resnet34")[0]
    assert pinned.is_relative_to(hf) and pinned.name == "model.safetensors"
    pinned.parent.mkdir(parents=True)
    state = fake_encoder_state("resnet34")
    safetensors.torch.save_file(state, pinned)
    model = SmpUNet("resnet34", decoder_channels=NARROW)
    assert model.weights_source == str(pinned)
    assert torch.equal(model.net.encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert SmpUNet("resnet34", decoder_channels=NARROW, weights="random").weights_source is None
    assert SmpUNet("resnet34", decoder_channels=NARROW, pretrained=False).weights_source is None

    # torchvision's file in the torch hub cache (what unet-resnet* read) for an encoder that is torchvision's class
    tv_file = cached_weight_files("mobilenet_v2")[1]
    assert tv_file.parent == torch_hub / "checkpoints"
    tv_file.parent.mkdir(parents=True)
    torch.manual_seed(3)
    tv = torchvision.models.mobilenet_v2(weights=None).state_dict()
    torch.save(tv, tv_file)
    model = SmpUNet("mobilenet_v2", decoder_channels=NARROW)
    assert model.weights_source == str(tv_file)
    assert torch.equal(model.net.encoder.features[18][0].weight, tv["features.18.0.weight"])

    # another smp release pinned another revision of the same repo
    other = pinned.parent.parent / "0123abcd" / "model.safetensors"
    other.parent.mkdir(parents=True)
    pinned.rename(other)
    assert SmpUNet("resnet34", decoder_channels=NARROW).weights_source == str(other)


def test_one_line_says_how_to_provide_missing_weights(caches, caplog):
    hf, torch_hub = caches
    with caplog.at_level(logging.WARNING, logger="pixelmill.models"):
        model = build_model({"arch": "smp-unet-resnet34", "decoder_channels": NARROW})
    assert model.weights_source is None
    [record] = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "random weights" in message and "weights=FILE" in message
    assert str(hf) in message and str(torch_hub / "checkpoints") in message  # where to put the file
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pixelmill.models"):
        build_model({"arch": "smp-unet-resnet34", "decoder_channels": NARROW, "weights": "random"})
        build_model({"arch": "smp-unet-resnet34", "decoder_channels": NARROW}, pretrained=False)
    assert not caplog.records


def test_weights_that_do_not_fit_or_cannot_be_read(caches, tmp_path):
    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match=f"{re.escape(str(wrong))}.*do not fit resnet34"):
        SmpUNet("resnet34", weights=str(wrong))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a weights file")
    with pytest.raises(ValueError, match=f"{re.escape(str(garbage))}.*cannot be read"):
        SmpUNet("efficientnet-b0", weights=str(garbage))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SmpUNet("mobilenet_v2", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="encoder='vgg11' is not valid"):
        SmpUNet("vgg11")


def test_the_archs_cover_the_encoders():
    assert [f"smp-unet-{e}" for e in ENCODERS] == SMP_ARCHS
