"""The lifecycle tests' pixel checks can fail: the independent decoding agrees with pixelmill's documented one on
every odd input, and a black, turned or wrongly decoded output (EXIF ignored, 16-bit clipped instead of scaled,
transparency dropped) is rejected. Fast: a random tiny net, no server."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pixelmill.models.factory import build_model
from pixelmill.tasks.core.images import decode_image
from tests.lifecycle import support


@pytest.fixture(scope="module")
def net():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: on a busy 2-core machine 2 threads took 12 s here, 1 thread 0.3 s
    torch.manual_seed(0)
    yield build_model({"arch": "unet-plain", "in_channels": 3, "out_channels": 3, "scale": 2, "residual": True,
                       "base": 8, "depth": 2}, pretrained=False).eval()
    torch.set_num_threads(before)


@pytest.mark.parametrize("task", list(support.BASES))
def test_reference_decoding_is_pixelmills_documented_decoding(task):
    for name, data in support.apply_inputs(task).items():
        for mode in ("RGB", "L"):
            ours = support.decode_reference(data, mode)
            assert np.array_equal(ours, np.asarray(decode_image(data, mode))), f"{name} ({mode})"


def test_odd_inputs_are_what_they_say():
    files = support.apply_inputs("restoration")
    opened = {name: Image.open(io.BytesIO(data)) for name, data in files.items()}
    assert opened["grey-16bit.png"].mode.startswith("I")
    assert opened["cmyk.jpg"].mode == "CMYK"
    assert opened["palette-transparent.png"].mode == "P" and "transparency" in opened["palette-transparent.png"].info
    assert opened["rgba.png"].mode == "RGBA"
    assert opened["exif-rotated.jpg"].getexif()[support.ORIENTATION] == 6
    sizes = [support.decode_reference(data, "RGB").shape[:2] for data in files.values()]
    assert len(set(sizes)) == len(sizes) and all(h != w for h, w in sizes)


def wrong_decodings(name: str, data: bytes) -> dict[str, np.ndarray]:
    """What a pipeline that skipped one documented rule would feed the model."""
    im = Image.open(io.BytesIO(data))
    wrong = {}
    if name == "exif-rotated.jpg":
        wrong["EXIF ignored"] = np.asarray(im.convert("RGB"))
    if name == "grey-16bit.png":
        wrong["16-bit clipped"] = np.asarray(im.convert("L").convert("RGB"))
    if name in ("rgba.png", "palette-transparent.png"):
        wrong["alpha dropped"] = np.asarray(im.convert("RGB"))
    return wrong


def test_wrong_outputs_fail_the_image_check(net):
    seen = set()
    for name, data in support.apply_inputs("restoration").items():
        if name == support.WIDE:
            continue  # 600 pixels wide: only its size is special, and it costs most of the time here
        expected = support.to_rgb8(support.forward(net, support.decode_reference(data, "RGB")))
        right = support.to_rgb8(support.forward(net, np.asarray(decode_image(data, "RGB"))))
        support.check_image_output(name, expected, Image.fromarray(right))
        bad = {"black": np.zeros_like(right), "turned 90": np.rot90(right), "turned 180": np.rot90(right, 2),
               "mirrored": right[:, ::-1]}
        bad |= {why: support.to_rgb8(support.forward(net, arr)) for why, arr in wrong_decodings(name, data).items()}
        seen |= set(bad)
        for why, arr in bad.items():
            with pytest.raises(AssertionError):
                support.check_image_output(name, expected, Image.fromarray(np.ascontiguousarray(arr)))
                pytest.fail(f"{name}: a {why} output passed the check")
    assert {"EXIF ignored", "16-bit clipped", "alpha dropped"} <= seen


def test_wrong_masks_fail_the_mask_check():
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 5, (36, 52)).astype(np.uint8)
    logits = torch.nn.functional.one_hot(torch.from_numpy(indices).long(), 7).permute(2, 0, 1).float() * 5
    support.check_mask_output("m", logits, Image.fromarray(indices))
    for why, bad in {"black": np.zeros_like(indices), "turned": np.rot90(indices, 2), "shifted": indices + 1}.items():
        with pytest.raises(AssertionError):
            support.check_mask_output("m", logits, Image.fromarray(np.ascontiguousarray(bad)))
            pytest.fail(f"a {why} mask passed the check")
