"""Every model in the factory passes one shared tester (timm / segmentation_models.pytorch style), plus the blocks
(ICNR, padding) and the encoder-weights rules (local file, URL, torch hub cache, never a download)."""

from __future__ import annotations

import json
import math
import urllib.request

import pytest
import torch
import torchvision

from pixelmill.models import unet
from pixelmill.models.blocks import PixelShuffleUp, SelfAttention, crop, icnr_, pad_to_multiple
from pixelmill.models.checkpoint import load_model_from_bytes, save_model_bytes
from pixelmill.models.factory import build_model, list_archs
from pixelmill.models.losses import SegmentationLoss
from pixelmill.models.unet import (
    PlainUNet,
    ResNetUNet,
    adapt_first_conv,
    imagenet_cache_path,
    predict,
    residual_base,
)

# Every registered arch at its defaults (a new arch is tested for free), plus the variants that matter.
CONFIGS = [{"arch": name} for name in list_archs()] + [
    # the options, on narrow decoders to keep the run fast
    {"arch": "unet-resnet18", "scale": 2, "in_channels": 1, "self_attention": True, "norm": "weight",
     "final_activation": "sigmoid", "decoder_channels": [64, 32, 32, 16, 16]},  # colorization: 1 channel in
    {"arch": "unet-resnet18", "scale": 4, "blur": False, "norm": "spectral", "decoder_channels": [32, 32, 16, 16, 8]},
    {"arch": "unet-plain", "scale": 2, "in_channels": 1},
    {"arch": "unet-plain", "scale": 4, "norm": "spectral", "self_attention": True},
    {"arch": "unet-plain", "norm": "weight", "blur": False, "depth": 2, "base": 8},
    {"arch": "critic", "output": "global", "self_attention": True, "base": 16},
    # super-resolution without BatchNorm: residual channel-attention blocks at every level
    {"arch": "unet-plain", "scale": 2, "block": "rcab", "base": 16, "residual": True},
    {"arch": "unet-plain", "scale": 4, "block": "rcab", "base": 8, "depth": 2, "norm": "weight"},
    # the upscaling as one conv and a PixelShuffle at the input's size (ESPCN)
    {"arch": "unet-plain", "scale": 4, "tail": "espcn", "base": 16, "residual": True},
    {"arch": "unet-plain", "scale": 2, "tail": "espcn", "in_channels": 1, "final_activation": "sigmoid"},
    # segmentation: 12 class logits (CamVid) at the input's resolution
    {"arch": "unet-plain", "out_channels": 12},
    {"arch": "unet-resnet18", "out_channels": 12, "decoder_channels": [32, 32, 16, 16, 16]},
]
SIZES = [(37, 53), (9, 11), (32, 32)]  # odd, tiny (smaller than the stride), already a multiple




def config_id(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items() if k != "arch") or "default"


@pytest.fixture(scope="module", params=CONFIGS, ids=[f"{c['arch']}[{config_id(c)}]" for c in CONFIGS])
def case(request):
    """(config, model) built once per module; each test sets the mode it needs."""
    torch.manual_seed(0)
    return request.param, build_model(request.param, pretrained=False)


def expected_shape(config: dict, batch: int, h: int, w: int) -> tuple[int, ...]:
    """What a model with this (complete) config returns for a (batch, C, h, w) input."""
    if config["arch"] == "critic":
        stride = 2 ** config["n_layers"]
        return (batch,) if config["output"] == "global" else (batch, 1, math.ceil(h / stride), math.ceil(w / stride))
    s = config["scale"]
    return (batch, config["out_channels"], s * h, s * w)


def example_input(config: dict, h: int, w: int, batch: int = 2) -> torch.Tensor:
    in_channels = config.get("in_channels", 3)
    return torch.randn(batch, in_channels, h, w, generator=torch.Generator().manual_seed(h * 100 + w))


# ------------------------------------------------------------------------------------------------- shared tester


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_output_shape_any_input_size(case, size):
    config, model = case
    model.eval()
    x = example_input(config, *size)
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == expected_shape(model.config, 2, *size)
    assert torch.isfinite(y).all()


def test_gradients_reach_every_parameter(case):
    config, model = case
    model.train()
    model.zero_grad(set_to_none=True)
    # ResNet U-Nets are the slow ones: a single image just above their 32 px stride
    resnet = config["arch"].startswith("unet-resnet")
    x = example_input(config, 33, 35, batch=1) if resnet else example_input(config, 37, 53)
    y = model(x)
    assert torch.isfinite(y).all()
    (y.float() ** 2).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"no gradient reaches {no_grad[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"


def test_save_load_round_trip_gives_identical_outputs(case):
    config, model = case
    model.eval()
    x = example_input(config, 37, 53, batch=1)
    with torch.no_grad():
        before = model(x)
    weights, saved_config = save_model_bytes(model)
    loaded = load_model_from_bytes(weights, json.loads(json.dumps(saved_config)))
    with torch.no_grad():
        after = loaded(x)
    assert torch.equal(before, after)
    assert loaded.config == model.config


def test_config_is_json_and_rebuilds_the_same_architecture(case):
    config, model = case
    cfg = model.config
    assert json.loads(json.dumps(cfg)) == cfg
    assert {k: v for k, v in cfg.items() if k in config} == config
    rebuilt = build_model(json.loads(json.dumps(cfg)), pretrained=False)
    assert rebuilt.config == cfg
    shapes = {n: t.shape for n, t in model.state_dict().items()}
    assert {n: t.shape for n, t in rebuilt.state_dict().items()} == shapes


# ------------------------------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("norm", ["none", "weight", "spectral"])
def test_icnr_pixel_shuffle_starts_as_nearest_neighbour(scale, norm):
    torch.manual_seed(0)
    up = PixelShuffleUp(8, 3, scale=scale, blur=False, norm=norm).eval()
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        y = up(x)  # (2, 3, 5s, 7s)
    assert y.shape == (2, 3, 5 * scale, 7 * scale)
    blocks = y.reshape(2, 3, 5, scale, 7, scale)
    assert torch.allclose(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks), atol=1e-6)
    assert y.abs().sum() > 0  # not trivially constant


def test_icnr_repeats_each_sub_kernel_over_its_shuffle_group():
    w = icnr_(torch.empty(3 * 4, 5, 3, 3), scale=2)
    groups = w.reshape(3, 4, 5, 3, 3)
    assert torch.equal(groups, groups[:, :1].expand_as(groups))
    with pytest.raises(ValueError, match="multiple of scale"):
        icnr_(torch.empty(6, 5, 1, 1), scale=2)


def test_blur_keeps_the_upsampled_size():
    up = PixelShuffleUp(4, 2, scale=2, blur=True)
    assert up(torch.randn(1, 4, 5, 7)).shape == (1, 2, 10, 14)


def test_self_attention_is_identity_at_init():
    attn = SelfAttention(16)
    x = torch.randn(2, 16, 5, 7)
    assert torch.equal(attn(x), x)


@pytest.mark.parametrize(("h", "w", "mode"), [(37, 53, "reflect"), (5, 7, "replicate"), (32, 64, "none")])
def test_pad_to_multiple_and_crop(h, w, mode):
    x = torch.randn(1, 2, h, w)
    padded, size = pad_to_multiple(x, 32)
    assert size == (h, w)
    assert padded.shape[-2] % 32 == 0 and padded.shape[-1] % 32 == 0
    assert torch.equal(crop(padded, size), x)
    if mode == "reflect":  # the row after the last one mirrors the one before it
        assert torch.equal(padded[..., h, :w], x[..., h - 2, :])
    if mode == "replicate":
        assert torch.equal(padded[..., -1, :w], x[..., -1, :])


def test_predict_runs_in_eval_mode_without_autograd():
    model = PlainUNet(base=8, depth=2).train()
    y = predict(model, torch.randn(1, 3, 17, 19))
    assert not model.training
    assert y.shape == (1, 3, 17, 19) and not y.requires_grad


@pytest.mark.parametrize("arch", ["unet-plain", "unet-resnet18"])
def test_segmentation_head_gives_logits_at_input_size_and_learns(arch):
    """A U-Net with out_channels = classes, scale 1, no residual and no final activation is a segmentation
    net: (B, K, H, W) logits for any H, W, and cross-entropy with an ignore index trains every parameter."""
    torch.manual_seed(0)
    extra = {"decoder_channels": [32, 32, 16, 16, 16], "weights": "random"} if arch != "unet-plain" else {"base": 8}
    model = build_model({"arch": arch, "out_channels": 12, **extra})
    x = torch.rand(2, 3, 35, 41)
    target = (x[:, 0] * 11).long()  # (2, 35, 41) classes 0..10 from the red channel
    target[:, :3] = 11  # CamVid's Unlabelled, ignored
    loss_fn = SegmentationLoss(ignore_index=11, dice=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(4):
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        assert logits.shape == (2, 12, 35, 41)
        loss = loss_fn(logits, target)
        loss.backward()
        assert not [n for n, p in model.named_parameters() if p.grad is None]
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert predict(model, x).argmax(1).shape == (2, 35, 41)


def test_rcab_levels_have_no_batchnorm_and_old_configs_stay_the_same():
    rcab = build_model({"arch": "unet-plain", "scale": 2, "block": "rcab"})
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in rcab.modules())
    assert rcab.config["block"] == "rcab"
    assert "block" not in build_model({"arch": "unet-plain"}).config  # a registry's existing configs read the same


def test_an_espcn_tail_runs_nothing_at_the_output_size_and_old_configs_stay_the_same():
    espcn = build_model({"arch": "unet-plain", "scale": 4, "tail": "espcn", "residual": True})
    stages = build_model({"arch": "unet-plain", "scale": 4, "residual": True})
    assert espcn.config["tail"] == "espcn" and "tail" not in stages.config
    x = torch.rand(1, 3, 24, 20)
    assert espcn(x).shape == stages(x).shape == (1, 3, 96, 80)
    assert torch.equal(espcn(x), residual_base(x, 4, 3))  # residual: starts as bicubic, like the stages
    convs = [m for m in espcn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[-1].out_channels == 3 * 16 and isinstance(espcn.head[1], torch.nn.PixelShuffle)
    with pytest.raises(ValueError, match="tail"):
        build_model({"arch": "unet-plain", "tail": "bilinear"})


def test_plain_unet_is_small():
    n = sum(p.numel() for p in PlainUNet().parameters())
    assert 200_000 < n < 1_000_000


# ------------------------------------------------------------------------------------------------- factory


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown arch 'unet-vgg'") as e:
        build_model({"arch": "unet-vgg"})
    for name in list_archs():
        assert name in str(e.value)


def test_unknown_argument_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match="'dropout'") as e:
        build_model({"arch": "unet-plain", "dropout": 0.1})
    assert "base" in str(e.value) and "depth" in str(e.value)
    with pytest.raises(ValueError, match="'encoder'"):  # fixed by the arch name
        build_model({"arch": "unet-resnet18", "encoder": "resnet50"})


@pytest.mark.parametrize("bad", [{"scale": 3}, {"norm": "batch"}, {"final_activation": "tanh"}, {"block": "dense"}])
def test_invalid_choices_say_what_is_valid(bad):
    with pytest.raises(ValueError, match="choose one of"):
        build_model({"arch": "unet-plain", **bad})


# ------------------------------------------------------------------------------------------------- encoder weights


@pytest.fixture
def fake_imagenet(tmp_path):
    """A 'pretrained' resnet18 state dict file (random weights, torchvision's key names, fc included)."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "fake-resnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty torch hub dir, and any download attempt fails the test."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return hub


def test_weights_from_a_file_fill_the_encoder(fake_imagenet, no_network):
    path, state = fake_imagenet
    model = ResNetUNet("resnet18", weights=str(path))
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert model.encoder.weights_source == str(path)


def test_colorization_sums_the_pretrained_rgb_kernels(fake_imagenet, no_network):
    path, state = fake_imagenet
    model = ResNetUNet("resnet18", in_channels=1, weights=str(path))
    assert torch.allclose(model.encoder.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))


def test_first_conv_for_more_input_channels_cycles_rgb():
    rgb = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
    conv = adapt_first_conv(rgb, 4)
    assert conv.weight.shape == (8, 4, 7, 7) and conv.stride == (2, 2)
    assert torch.allclose(conv.weight, rgb.weight[:, [0, 1, 2, 0]] * 0.75)


def test_no_weights_and_no_cache_builds_without_downloading(no_network):
    model = ResNetUNet("resnet18")
    assert model.encoder.weights_source is None
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 3, 40, 40)


def test_weights_come_from_the_torch_hub_cache_when_present(fake_imagenet, no_network):
    path, state = fake_imagenet
    cached = imagenet_cache_path("resnet18")
    assert cached.parent == no_network / "checkpoints"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    model = ResNetUNet("resnet18")
    assert model.encoder.weights_source == str(cached)
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"])
    # 'random' and pretrained=False both ignore the cache
    assert ResNetUNet("resnet18", weights="random").encoder.weights_source is None
    assert ResNetUNet("resnet18", pretrained=False).encoder.weights_source is None


def test_weights_from_a_url_only_when_given(fake_imagenet, monkeypatch):
    _, state = fake_imagenet
    calls = []

    def fake_download(url, **kwargs):
        calls.append(url)
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = ResNetUNet("resnet18", weights="https://example.invalid/r18.pth")
    assert calls == ["https://example.invalid/r18.pth"]
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"])


def test_weights_that_do_not_fit_or_do_not_exist(tmp_path, no_network):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit resnet18"):
        ResNetUNet("resnet18", weights=str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ResNetUNet("resnet18", weights=str(tmp_path / "missing.pth"))


def test_loading_a_checkpoint_never_reads_encoder_weights(monkeypatch):
    model = ResNetUNet("resnet18", weights="random")
    weights, config = save_model_bytes(model)

    def refuse(*args, **kwargs):
        raise AssertionError("encoder weights read while loading a checkpoint")

    monkeypatch.setattr(unet, "read_encoder_weights", refuse)
    loaded = load_model_from_bytes(weights, {**config, "weights": "https://example.invalid/r18.pth"})
    assert torch.equal(loaded.encoder.conv1.weight, model.encoder.conv1.weight)


@pytest.mark.parametrize("arch", ["unet-plain", "unet-resnet18"])
@pytest.mark.parametrize("scale,in_channels", [(1, 3), (2, 3), (1, 1)])
def test_residual_nets_start_from_the_upscaled_input(arch, scale, in_channels):
    torch.manual_seed(0)
    extra = {"weights": "random"} if arch != "unet-plain" else {}
    model = build_model({"arch": arch, "scale": scale, "in_channels": in_channels, "residual": True, **extra}).eval()
    for p in model.head.parameters():  # silence the learned part: what is left is the residual base
        torch.nn.init.zeros_(p)
    x = torch.rand(1, in_channels, 35, 37)
    expected = torch.nn.functional.interpolate(x.expand(-1, 3, -1, -1), scale_factor=scale, mode="bicubic") \
        if scale > 1 else x.expand(-1, 3, -1, -1)
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_residual_needs_an_image_output():
    with pytest.raises(ValueError, match="residual=True needs an image out"):
        build_model({"arch": "unet-plain", "out_channels": 12, "residual": True})


@pytest.mark.parametrize("arch", ["unet-plain", "unet-resnet18"])
def test_input_scale_runs_at_lower_resolution_and_answers_at_the_input_size(arch):
    kwargs = {"weights": "random"} if arch != "unet-plain" else {"base": 8, "depth": 2}
    model = build_model({"arch": arch, "out_channels": 5, "input_scale": 0.5, **kwargs}).eval()
    x = torch.rand(2, 3, 37, 51)
    with torch.no_grad():
        assert model(x).shape == (2, 5, 37, 51)
    assert model.config["input_scale"] == 0.5 and build_model(model.config).config == model.config
    assert "input_scale" not in build_model({"arch": arch, "out_channels": 5, **kwargs}).config  # old configs stay
    with pytest.raises(ValueError, match="input_scale"):
        build_model({"arch": arch, "residual": True, "input_scale": 0.5, **kwargs})


def test_the_torch_free_arch_names_match_the_factory():
    from pixelmill.models.archs import ARCH_NAMES

    assert list(ARCH_NAMES) == list_archs()
