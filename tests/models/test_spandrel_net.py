"""The factory's "spandrel" arch: a model spandrel detects, rebuilt from JSON alone, gives spandrel's own output
at any size (padding to the architecture's needs, cropping back), and a config names nothing but spandrel's
classes. Checkpoints are built with spandrel's own classes and random weights, small enough for a CPU."""

from __future__ import annotations

import json

import pytest
import torch
from spandrel import SizeRequirements
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.SwinIR import SwinIR

from pixelmill.models.checkpoint import load_model_from_bytes, save_model_bytes
from pixelmill.models.factory import build_model
from pixelmill.models.spandrel_net import SpandrelNet, detect, spandrel_config

NETWORKS = {
    # Real-ESRGAN's RRDBNet, 1 block of 8 filters
    "ESRGAN": lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2),
    # two blocks: the second uses shifted windows (an attention mask that depends on the input size)
    "SwinIR": lambda: SwinIR(img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=4, mlp_ratio=2,
                             upscale=2, upsampler="pixelshuffledirect"),
}


@pytest.fixture(scope="module", params=list(NETWORKS))
def detected(request):
    torch.manual_seed(0)
    return detect(NETWORKS[request.param]().state_dict())


def test_config_is_json_and_rebuilds_what_spandrel_loaded(detected):
    config = spandrel_config(detected)
    assert json.loads(json.dumps(config)) == config and config["scale"] == 2
    net = build_model({"arch": "spandrel", **config}, pretrained=False)
    net.net.load_state_dict(detected.model.state_dict(), strict=True)
    net.eval()
    assert net.config == {"arch": "spandrel", **config}
    # odd sizes, and one below SwinIR's minimum of 16 (padded, then cropped back)
    for h, w in ((19, 23), (9, 11), (32, 17)):
        x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.inference_mode():
            y = net(x)
            expected = torch.cat([detected(x[i : i + 1]) for i in range(2)])
        assert y.shape == (2, 3, 2 * h, 2 * w)
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)


def test_registry_bytes_round_trip(detected):
    net = build_model({"arch": "spandrel", **spandrel_config(detected)}, pretrained=False)
    net.net.load_state_dict(detected.model.state_dict())
    weights, config = save_model_bytes(net)
    loaded = load_model_from_bytes(weights)  # the config stored in the file
    x = torch.rand(1, 3, 21, 18)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), net.eval()(x), atol=0, rtol=0)
    assert loaded.config == config


def test_padding_meets_minimum_multiple_and_square():
    net = SpandrelNet(**spandrel_config(detect(NETWORKS["ESRGAN"]().state_dict()))).eval()
    net.size_requirements = SizeRequirements(minimum=16, multiple_of=8, square=True)
    assert net.padding(9, 30) == (23, 2)  # 9 -> 16 -> 16, 30 -> 32; square: both 32
    assert net.padding(16, 16) == (0, 0)
    with torch.inference_mode():
        assert net(torch.rand(1, 3, 9, 30)).shape == (1, 3, 18, 60)
        assert net(torch.rand(1, 3, 2, 3)).shape == (1, 3, 4, 6)  # smaller than a reflection: replicated


def test_configs_import_only_spandrel_classes_and_must_agree_with_detection():
    config = spandrel_config(detect(NETWORKS["ESRGAN"]().state_dict()))
    with pytest.raises(ValueError, match="not one of spandrel's architectures"):
        SpandrelNet(**(config | {"model_class": "os:system"}))
    with pytest.raises(ValueError, match="x2, 3 -> 3 channels, not x4"):
        SpandrelNet(**(config | {"scale": 4}))
    with pytest.raises(ValueError, match="spandrel has no architecture 'Nope'"):
        SpandrelNet(**(config | {"spandrel_arch": "Nope"}))


def test_an_architecture_without_half_precision_runs_in_float32_under_autocast():
    net = SpandrelNet(**spandrel_config(detect(NETWORKS["ESRGAN"]().state_dict()))).eval()
    net.supports_half = False  # as spandrel says of e.g. some transformer archs: float16 overflows
    x = torch.rand(1, 3, 12, 10)
    with torch.inference_mode():
        plain = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # what CUDA's float16 autocast does to the forward
            y = net(x)
    assert y.dtype == torch.float32 and torch.equal(y, plain)
