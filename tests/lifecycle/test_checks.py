"""The lifecycle tests' pixel checks agree with pixelmill and can fail: the independent decoding and model input
agree with pixelmill's documented ones on every odd input, the reference output equals what pixelmill's own path
writes for a random tiny net, and a black, turned or wrongly decoded output (EXIF ignored, 16-bit cut to 8 bits,
grey written as RGB, transparency composited on white or its black fed to the model, alpha dropped or not
resized bicubic) is rejected. Fast: random tiny nets, no server."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pytest
import torch
from PIL import Image

from pixelmill.models.factory import build_model
from pixelmill.tasks.core import registry
from pixelmill.tasks.core.classes import ClassMap
from pixelmill.tasks.core.imageio import read_picture
from pixelmill.tasks.core.metadata import provenance_of
from pixelmill.tasks.inference.pipeline import predict_file
from pixelmill.tasks.inference.plan import ApplyConfig
from pixelmill.tasks.inference.predictors import working_pixels
from tests.lifecycle import support


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: on a busy 2-core machine 2 threads took 12 s here, 1 thread 0.3 s
    yield
    torch.set_num_threads(before)


def tiny(in_channels: int, out_channels: int, scale: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model({"arch": "unet-plain", "in_channels": in_channels, "out_channels": out_channels,
                        "scale": scale, "residual": out_channels == 3, "base": 8, "depth": 2},
                       pretrained=False).eval()


@pytest.fixture(scope="module")
def net():
    return tiny(3, 3, 2)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> str:
    """A random net per model task, registered: pixelmill's own path (predict_file, what `enhance` runs) for them."""
    ws = str(tmp_path_factory.mktemp("lifecycle-checks") / "ws")
    registry.save(ws, "restoration", tiny(3, 3, 2), {"task": "restoration", "scale": 2}, {"pairs_set": "x"})
    registry.save(ws, "colorize", tiny(1, 3, 1), {"task": "colorize", "scale": 1, "in_channels": 1},
                  {"pairs_set": "x"})
    registry.save(ws, "segmentation", tiny(3, 3, 1),
                  {"task": "segmentation", "scale": 1, "classes": ClassMap(names=("a", "b", "c")).model_dump(
                      mode="json"), "majority_class": 1}, {"dataset": "x"})
    return ws


@pytest.mark.parametrize("task", list(support.BASES))
def test_reference_decoding_is_pixelmills_documented_decoding(task):
    for name, data in support.apply_inputs(task).items():
        pic = read_picture(data)
        pixels, alpha = support.decode(data)
        assert pixels.dtype == pic.pixels.dtype and np.array_equal(pixels, pic.pixels), name
        assert (alpha is None) == (pic.alpha is None) and (alpha is None or np.array_equal(alpha, pic.alpha)), name
        for mode in ("RGB", "L"):
            ours = support.model_input(data, mode)
            theirs = working_pixels(read_picture(data), mode)[0]
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), f"{name} ({mode})"


def test_the_transparent_fill_is_a_pull_push():
    """Worked by hand: a hidden pixel takes the mean of the visible ones in its smallest aligned 2^k block."""
    pixels = np.array([[10, 0, 0, 0], [20, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 101]], np.uint8)
    alpha = np.array([[255, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 255]], np.uint8)
    want = np.array([[10, 15, 44, 44], [20, 15, 44, 44], [44, 44, 101, 101], [44, 44, 101, 101]], np.uint8)
    # 15: the 2x2 block around it; 44: its 2x2 block is empty, the 4x4 one holds (10 + 20 + 101) / 3 = 43.67
    assert np.array_equal(support.fill_transparent(pixels, alpha), want)
    assert np.array_equal(support.fill_transparent(pixels, np.zeros_like(alpha)), pixels)  # nothing visible


def test_odd_inputs_are_what_they_say():
    files = support.apply_inputs("restoration")
    opened = {name: Image.open(io.BytesIO(data)) for name, data in files.items()}
    assert opened[support.GREY16].mode.startswith("I;16")
    grey = np.asarray(opened[support.GREY16]).astype(np.int64)
    assert (grey % 257 != 0).mean() > 0.9, "the 16-bit input's low byte carries detail an 8-bit step loses"
    assert opened["cmyk.jpg"].mode == "CMYK" and "icc_profile" not in opened["cmyk.jpg"].info
    assert opened["palette-transparent.png"].mode == "P" and "transparency" in opened["palette-transparent.png"].info
    assert opened["rgba.png"].mode == "RGBA"
    assert opened["exif-rotated.jpg"].getexif()[support.ORIENTATION] == 6
    for name, hole in support.ALPHA_HOLES.items():
        pixels, alpha = support.decode(files[name])
        assert (alpha[hole] == 0).all() and (pixels[hole] == 0).all() and (alpha == 0).sum() == alpha[hole].size
    sizes = [support.decode(data)[0].shape[:2] for data in files.values()]
    assert len(set(sizes)) == len(sizes) and all(h != w for h, w in sizes)


@pytest.mark.parametrize("task", list(support.BASES))
def test_the_reference_is_what_pixelmill_writes(task, workspace):
    """Every odd input through pixelmill's own path (a random net per task): the reference's output, its depth,
    its channels and alpha, and the provenance. Pins TOLERANCE_16 (apply's thread count is pixelmill's own here)."""
    card = registry.resolve(workspace, f"{task}:v1")
    net = support.load_net(card.uri)
    for name, data in support.apply_inputs(task).items():
        if name == support.WIDE:
            continue  # only its size is special (the lifecycle tiles it), and it costs most of the time here
        _, _, encoded = predict_file(card, data, ApplyConfig(device="cpu"), "out.png")
        written = encoded.files["output"][1]
        assert provenance_of(written)["model_version"] == "v1", name
        if task == "segmentation":
            logits = support.forward(net, support.model_input(data, "RGB"))
            got, top2 = np.asarray(Image.open(io.BytesIO(written))), logits.topk(2, dim=0).values
            sure = (top2[0] - top2[1]).numpy() > 1e-3  # a random net's mask may be one class: no flatness check
            assert np.array_equal(got[sure], logits.argmax(0).numpy()[sure]), name
        else:
            support.check_image_output(name, support.expected_image(task, net, data), written,
                                       support.reference_alpha(data))
    torch.set_num_threads(1)  # Runtime.of set its own


def encode_png(pixels: np.ndarray, alpha: np.ndarray | None = None) -> bytes:
    """An output file as apply would write it: 8-bit through Pillow, 16-bit through libpng."""
    arr = np.ascontiguousarray(pixels if alpha is None else np.dstack([pixels, alpha]))
    if arr.dtype == np.uint16:
        return imagecodecs.png_encode(arr)
    return support.png(arr)


def run(net, arr: np.ndarray) -> np.ndarray:
    return support.to_pixels(support.forward(net, arr), arr.dtype)


def wrong_outputs(net, name: str, data: bytes, expected: np.ndarray, alpha: np.ndarray | None) -> dict[str, bytes]:
    """What a pipeline that broke one documented rule would write."""
    im = Image.open(io.BytesIO(data))
    stored, _ = support.decode(data)
    wrong = {}
    if name == "exif-rotated.jpg":
        wrong["EXIF ignored"] = encode_png(run(net, np.asarray(im.convert("RGB"))))
    if name == support.GREY16:
        grey = np.repeat(stored[..., None], 3, axis=2)
        cut = np.rint(grey / 257).astype(np.uint8)
        wrong["16-bit read at 8 bits"] = encode_png(support.luma(run(net, cut)))
        wrong["16-bit through 8 bits, written at 16"] = encode_png(support.luma(run(net, cut.astype(np.uint16) * 257)))
        wrong["grey written as RGB"] = encode_png(run(net, grey))
        wrong["grey written at 8 bits"] = encode_png(np.rint(expected / 257).astype(np.uint8))
    if alpha is not None:
        size = expected.shape[1::-1]
        right_alpha = support.resized_alpha(alpha, size)
        white = np.where((alpha == 255)[..., None], stored, 255).astype(np.uint8)
        wrong["alpha composited on white"] = encode_png(run(net, white), right_alpha)
        wrong["transparent black fed to the model"] = encode_png(run(net, stored), right_alpha)
        wrong["alpha dropped"] = encode_png(expected)
        wrong["alpha resized nearest"] = encode_png(expected, np.asarray(Image.fromarray(alpha).resize(size)))
    return wrong


def test_wrong_outputs_fail_the_image_check(net):
    seen = set()
    for name, data in support.apply_inputs("restoration").items():
        if name == support.WIDE:
            continue  # 600 pixels wide: only its size is special, and it costs most of the time here
        expected = support.expected_image("restoration", net, data)
        alpha = support.reference_alpha(data)
        right_alpha = None if alpha is None else support.resized_alpha(alpha, expected.shape[1::-1])
        support.check_image_output(name, expected, encode_png(expected, right_alpha), alpha)
        bad = {"black": encode_png(np.zeros_like(expected), right_alpha),
               "turned 90": encode_png(np.rot90(expected)),
               "turned 180": encode_png(np.rot90(expected, 2), right_alpha),
               "mirrored": encode_png(expected[:, ::-1], right_alpha)}
        bad |= wrong_outputs(net, name, data, expected, alpha)
        seen |= set(bad)
        for why, written in bad.items():
            with pytest.raises(AssertionError):
                support.check_image_output(name, expected, written, alpha)
                pytest.fail(f"{name}: a {why} output passed the check")
    assert {"EXIF ignored", "16-bit read at 8 bits", "16-bit through 8 bits, written at 16", "grey written as RGB",
            "grey written at 8 bits", "alpha composited on white", "transparent black fed to the model",
            "alpha dropped", "alpha resized nearest"} <= seen


def test_wrong_masks_fail_the_mask_check():
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 5, (36, 52)).astype(np.uint8)
    logits = torch.nn.functional.one_hot(torch.from_numpy(indices).long(), 7).permute(2, 0, 1).float() * 5
    support.check_mask_output("m", logits, Image.fromarray(indices))
    for why, bad in {"black": np.zeros_like(indices), "turned": np.rot90(indices, 2), "shifted": indices + 1}.items():
        with pytest.raises(AssertionError):
            support.check_mask_output("m", logits, Image.fromarray(np.ascontiguousarray(bad)))
            pytest.fail(f"a {why} mask passed the check")
