"""The lifecycle tests' tools: training data per model task, odd input files, the killed training process, and an
independent computation of what `apply` must write (decode with PIL and numpy the documented way, run the
registered weights with plain torch).

Nothing here goes through pixelmill's code for images or inference (tasks/core/imageio, tasks/inference,
registry.load): the model is rebuilt from the config stored in its safetensors file (models/checkpoint.py, the
weights format), and every documented rule is written out below:

- decoding: EXIF orientation, CMYK without a profile -> RGB (Pillow's formula), palette looked up, palette
  transparency as alpha, 16-bit kept at 16 bits (the model sees uint16 / 65535, never an 8-bit step);
- transparency: the colours of fully transparent pixels (alpha 0) filled from the visible ones (pull-push: the
  mean of the visible pixels of the smallest aligned 2^k block around the pixel that has any), visible colours
  as stored; the output carries the input's alpha resized bicubic;
- channels: RGB -> grey by ITU-R 601 luma with float weights, rounded; grey repeated for an RGB model;
- output: at the input's depth (8 or 16 bits); a restoration of a grey input is written grey (luma of the
  model's RGB output at that depth); a colorization writes RGB.

16-bit PNG outputs are read with imagecodecs (libpng): Pillow reads 16-bit colour PNG at 8 bits.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import safetensors.torch
import torch
from PIL import Image

from pixelmill.models.checkpoint import load_model_from_bytes
from pixelmill.tasks.core import storage
from pixelmill.tasks.prep.scenes import make_scene

PIXELMILL = str(Path(sys.executable).parent / "pixelmill")
ORIENTATION = 0x0112
PEAK = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
# An output may differ from the reference by 1 code value at its depth: 1 of 255, and at 16 bits 1 of 65535, not a
# few. Both run the same float32 model on the same float32 input (x / 255 or x / 65535) and round the same way, and
# apply's CPU path neither pads nor blends a one-tile image; what differs is apply's thread count (cores / workers)
# against the reference's one thread, i.e. a convolution's sums in another order (~1e-7 relative, ~0.01 of a 16-bit
# code), which can put a value just past a rounding boundary: one code (a grey output's luma of three such
# channels moves by at most one before its rounding). Measured: 0 codes everywhere off the tiled image
# (test_checks.py, pixelmill's own path at 1 and 2 threads; the lifecycle's trained nets); the seams of a tiled
# image are judged apart.
TOLERANCE_16 = 1


# ---------------------------------------------------------------- base pictures per task


def texture(seed: int, w: int, h: int) -> np.ndarray:
    """Waves plus an edge (tests/helpers.texture_png's recipe, twice the frequencies): a tiny x2 net trained for
    40 steps beats bicubic by ~0.24 dB Y-PSNR on these (at tests/helpers' frequencies by only ~0.02-0.04 dB)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / 32
    img = np.stack([np.sin(2 * np.pi * (x * rng.uniform(1, 4) + y * rng.uniform(1, 4)) + rng.uniform(0, 6))
                    for _ in range(3)], -1)
    img = ((img + 1) * 127.5).astype(np.uint8)
    img[rng.integers(0, h // 2):, rng.integers(0, w // 2):] //= 2
    return img


def tinted(seed: int, w: int, h: int) -> np.ndarray:
    """A grey wave field coloured through one fixed colour ramp: the colour follows from the grey level, so a
    colorization net has something to learn."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / 64
    g = (np.sin(2 * np.pi * (x * rng.uniform(1, 3) + y * rng.uniform(1, 3)) + rng.uniform(0, 6)) + 1) / 2
    rgb = np.stack([0.15 + 0.85 * g, 0.2 + 0.6 * g ** 2, 0.9 - 0.7 * g], -1)
    return np.clip(rgb * 255, 0, 255).round().astype(np.uint8)


def scene(seed: int, w: int, h: int) -> np.ndarray:
    return make_scene(np.random.default_rng([1000, seed]), w, h)[0]


BASES = {"restoration": texture, "colorize": tinted, "segmentation": scene}


def png(arr: np.ndarray | Image.Image, **save) -> bytes:
    im = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, "PNG", **save)
    return buf.getvalue()


def jpeg(im: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, **save)
    return buf.getvalue()


# ---------------------------------------------------------------- odd inputs


WIDE = "wide.png"
GREY16 = "grey-16bit.png"
ALPHA_HOLES = {"palette-transparent.png": (slice(5, 20), slice(8, 30)), "rgba.png": (slice(10, 30), slice(20, 44))}


def apply_inputs(task: str) -> dict[str, bytes]:
    """name -> file bytes: ordinary pictures and the odd modes, each of its own size (so no two share a CPU batch),
    all but WIDE smaller than one tile, none square (a turned output cannot keep the shape)."""
    base = BASES[task]
    files = {"plain-a.png": png(base(101, 56, 40)), "plain-b.jpg": jpeg(Image.fromarray(base(102, 40, 52))),
             WIDE: png(base(108, 600, 40))}  # wider than a CPU tile (512 for base 8): apply cuts it in two

    grey8 = np.asarray(Image.fromarray(base(103, 48, 36)).convert("L"))
    grey = grey8.astype(np.uint16) * 257  # 16-bit: the low byte carries real detail ...
    grey += np.random.default_rng(3).integers(0, 128, grey.shape, dtype=np.uint16)  # ... an 8-bit step loses
    files[GREY16] = png(Image.fromarray(grey))

    files["cmyk.jpg"] = jpeg(Image.fromarray(base(104, 44, 60)).convert("CMYK"))

    pal = Image.fromarray(base(105, 60, 44)).quantize(31)  # indices 0..30
    idx = np.asarray(pal).copy()
    idx[ALPHA_HOLES["palette-transparent.png"]] = 31  # a transparent hole; its palette colour is black
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.getpalette()[: 31 * 3] + [0, 0, 0])
    files["palette-transparent.png"] = png(im, transparency=31)

    rgba = np.dstack([base(106, 52, 36), np.full((36, 52), 255, np.uint8)])
    rgba[ALPHA_HOLES["rgba.png"]] = (0, 0, 0, 0)  # fully transparent black: the model must not see the black
    files["rgba.png"] = png(rgba)

    shown = base(107, 36, 60)  # what a person sees: 36 wide, 60 high
    stored = np.rot90(shown, 1)  # orientation 6 turns the stored pixels 90 degrees clockwise to show them
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    files["exif-rotated.jpg"] = jpeg(Image.fromarray(np.ascontiguousarray(stored)), exif=exif)
    return files


# ---------------------------------------------------------------- the documented decoding, written out


def luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8/uint16 -> (H, W) of the same type: ITU-R 601 luma with float weights, rounded (half to
    even). float32, as documented for tasks/inference/outputs.luma: computed exactly (in thousandths) the result
    differs on values within a float32 rounding of x.5 (~1 in 1000 of 8-bit values, more at 16 bits) by one."""
    w = [np.float32(0.299), np.float32(0.587), np.float32(0.114)]
    y = rgb[..., 0].astype(np.float32) * w[0] + rgb[..., 1].astype(np.float32) * w[1] \
        + rgb[..., 2].astype(np.float32) * w[2]
    return np.clip(np.rint(y), 0, PEAK[rgb.dtype]).astype(rgb.dtype)


def decode(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixels (H, W) or (H, W, 3) uint8/uint16 as stored, alpha (H, W) of the same type or None), upright."""
    im = Image.open(io.BytesIO(data))
    im.load()
    orientation = im.getexif().get(ORIENTATION, 1)
    alpha = None
    if im.mode in ("I;16", "I;16B", "I;16L"):
        arr = np.asarray(im).astype(np.uint16)  # full depth: no 8-bit step
    elif im.mode == "CMYK":  # no ICC profile: Pillow's formula, R = 255 - min(255, C + K) in its fixed point
        c = np.asarray(im).astype(np.int64)
        nk = 255 - c[..., 3:4]
        t = c[..., :3] * nk + 128
        arr = (nk - (((t >> 8) + t) >> 8)).astype(np.uint8)
    elif im.mode == "P":
        palette = np.array(im.getpalette(), np.uint8).reshape(-1, 3)
        idx = np.asarray(im)
        arr = palette[idx]
        trns = im.info.get("transparency")
        if isinstance(trns, int):
            alpha = np.where(idx == trns, 0, 255).astype(np.uint8)
        elif trns is not None:  # one alpha byte per palette entry; entries past its end are opaque
            alpha = np.concatenate([np.frombuffer(trns, np.uint8), np.full(256, 255, np.uint8)])[idx]
    elif im.mode == "RGBA":
        a = np.asarray(im)
        arr, alpha = a[..., :3], a[..., 3]
    elif im.mode in ("RGB", "L"):
        arr = np.asarray(im)
    else:
        raise AssertionError(f"no reference decoding for mode {im.mode}")
    turns = {1: 0, 3: 2, 6: -1, 8: 1}[orientation]  # -1: 90 degrees clockwise
    arr = np.ascontiguousarray(np.rot90(arr, turns))
    return arr, None if alpha is None else np.ascontiguousarray(np.rot90(alpha, turns))


def fill_transparent(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Each fully transparent pixel's colour: the mean (rounded half to even) of the visible pixels in the
    smallest 2^k x 2^k block aligned to multiples of 2^k that holds the pixel and any visible pixel (the pyramid
    of a pull-push fill); every other pixel as stored. Nothing to fill when all or nothing is transparent."""
    hidden = alpha == 0
    if not hidden.any() or hidden.all():
        return pixels
    h, w = hidden.shape
    colour = pixels.reshape(h, w, -1).astype(np.int64)
    visible = (~hidden).astype(np.int64)
    out = colour.astype(np.float64)
    todo = hidden.copy()
    size = 1
    while todo.any():
        size *= 2
        bh, bw = -(-h // size), -(-w // size)
        sums = np.zeros((bh, bw, colour.shape[2]), np.int64)
        counts = np.zeros((bh, bw), np.int64)
        ys, xs = np.mgrid[0:h, 0:w] // size
        np.add.at(sums, (ys, xs), colour * visible[..., None])
        np.add.at(counts, (ys, xs), visible)
        here = todo & (counts[ys, xs] > 0)
        out[here] = np.rint(sums[ys, xs][here] / counts[ys, xs][here][:, None])
        todo &= ~here
    return out.astype(pixels.dtype).reshape(pixels.shape)


def model_input(data: bytes, mode: str) -> np.ndarray:
    """What the model must see, as integer pixels (uint8, or uint16 for a 16-bit file): decoded, transparent
    colours filled, then in the model's channels (luma for a grey model, grey repeated for an RGB one)."""
    arr, alpha = decode(data)
    if alpha is not None:
        arr = fill_transparent(arr, alpha)
    if mode == "L":
        return arr if arr.ndim == 2 else luma(arr)
    return arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)


def reference_alpha(data: bytes) -> np.ndarray | None:
    """The input's transparency as displayed (EXIF applied), or None when it is opaque."""
    return decode(data)[1]


# ---------------------------------------------------------------- the model, without pixelmill's inference


def load_weights(version_uri: str) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(storage.read_bytes(storage.join(version_uri, "weights.safetensors")))


def load_net(version_uri: str) -> torch.nn.Module:
    """The registered model rebuilt from the config stored in its weights file (no registry code)."""
    return load_model_from_bytes(storage.read_bytes(storage.join(version_uri, "weights.safetensors"))).eval()


def in_mode(net: torch.nn.Module) -> str:
    return "L" if net.config.get("in_channels", 3) == 1 else "RGB"


@torch.inference_mode()
def forward(net: torch.nn.Module, arr: np.ndarray) -> torch.Tensor:
    """(C, H*s, W*s) float output of one whole image (H, W[, C]) uint8 or uint16, scaled by its full scale."""
    hwc = arr if arr.ndim == 3 else arr[..., None]
    x = torch.from_numpy(hwc.astype(np.float32)).permute(2, 0, 1).div(PEAK[arr.dtype])[None]
    return net(x)[0]


def to_pixels(y: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) integer pixels at full scale of `dtype`, rounded."""
    return y.clamp(0, 1).mul(PEAK[np.dtype(dtype)]).round().permute(1, 2, 0).numpy().astype(dtype)


def expected_image(task: str, net: torch.nn.Module, data: bytes) -> np.ndarray:
    """What a restoration or colorize model's output file must hold (without alpha): the forward at the input's
    depth; grey again (luma) when a restoration's input was grey."""
    x = model_input(data, in_mode(net))
    out = to_pixels(forward(net, x), x.dtype)
    if task == "restoration" and decode(data)[0].ndim == 2:
        out = luma(out)
    return out


def resized_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """alpha at size (width, height): bicubic in float, then clipped and rounded. (Pillow's 8-bit resize clips
    and rounds between its horizontal and vertical passes: up to 14 levels off next to a hard 0/255 edge.)"""
    if alpha.shape == size[::-1]:
        return alpha
    scaled = np.asarray(Image.fromarray(alpha.astype(np.float32), "F").resize(size, Image.Resampling.BICUBIC))
    return np.clip(np.rint(scaled), 0, PEAK[alpha.dtype]).astype(alpha.dtype)


def read_output(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """An image output at full depth: (pixels (H, W) or (H, W, 3), alpha or None)."""
    im = Image.open(io.BytesIO(data))
    if im.format == "PNG" and data[24] == 16:  # IHDR's bit depth: Pillow keeps the high byte of 16-bit colour
        arr = imagecodecs.png_decode(data)
        arr = arr[..., None] if arr.ndim == 2 else arr
        colour = 1 if arr.shape[2] in (1, 2) else 3
        pixels = arr[..., 0] if colour == 1 else arr[..., :3]
        return pixels, (arr[..., colour] if arr.shape[2] > colour else None)
    assert im.mode in ("L", "LA", "RGB", "RGBA"), f"an image output in mode {im.mode}"
    arr = np.asarray(im)
    if im.mode in ("LA", "RGBA"):
        return (arr[..., 0] if im.mode == "LA" else arr[..., :3]), arr[..., -1]
    return arr, None


def check_image_output(name: str, expected: np.ndarray, data: bytes, alpha: np.ndarray | None = None,
                       seams: bool = False) -> None:
    """Restoration and colorize: the output file holds `expected` (its channels, its depth) within 1 code value
    (TOLERANCE_16 at 16 bits; see there); `seams`: an image apply cut in tiles, where the feathered blend at the
    seams explains more (< 0.5 dB by the README). It carries the input's alpha resized to it (bicubic), or none
    when the input had none."""
    got, got_alpha = read_output(data)
    assert got.dtype == expected.dtype, f"{name}: a {got.dtype} output, expected {expected.dtype} (bit depth)"
    assert got.shape == expected.shape, f"{name}: output {got.shape} != expected {expected.shape} (grey? turned?)"
    peak = PEAK[expected.dtype]
    tolerance = 1 if peak == 255 else TOLERANCE_16
    diff = np.abs(got.astype(np.int64) - expected.astype(np.int64))
    if seams:
        levels = diff * (255 / peak)  # in 8-bit levels, whatever the depth
        close = (diff <= tolerance).mean()
        assert close > 0.99 and levels.mean() < 0.1, (
            f"{name}: only {close:.1%} of the values within {tolerance} of a whole-image forward (mean "
            f"{levels.mean():.2f} levels, max {diff.max()} codes)")
    else:
        assert diff.max() <= tolerance, (
            f"{name}: {int((diff > tolerance).sum())} of {diff.size} values differ by more than {tolerance} "
            f"(max {diff.max()} of {peak}, mean output {got.mean():.1f} vs {expected.mean():.1f})")
    assert expected.std() > 5 * peak / 255, f"{name}: the expected output is flat; a constant output could pass"
    if alpha is None:
        assert got_alpha is None, f"{name}: an opaque input got an output with alpha"
        return
    assert got_alpha is not None, f"{name}: the input's transparency is missing from the output"
    want = resized_alpha(alpha, got_alpha.shape[::-1]).astype(np.int64) * (peak // PEAK[alpha.dtype])
    worst = np.abs(got_alpha.astype(np.int64) - want).max()
    assert worst <= peak // 255, f"{name}: the output's alpha is not the input's (off by up to {worst} of {peak})"


def check_mask_output(name: str, logits: torch.Tensor, out: Image.Image, seams: bool = False) -> None:
    """Segmentation: the class indices of the reference logits, except where the top two are a near tie;
    `seams`: an image apply cut in tiles, where the blended logits near the seams may pick another class."""
    got = np.asarray(out)
    top2 = logits.topk(2, dim=0).values
    expected = logits.argmax(0).numpy()
    assert got.shape == expected.shape, f"{name}: mask {got.shape} != expected {expected.shape} (turned?)"
    sure = (top2[0] - top2[1]).numpy() > 1e-3
    wrong = (got != expected) & sure
    allowed = wrong.size // 100 if seams else 0
    assert wrong.sum() <= allowed, f"{name}: {int(wrong.sum())} of {wrong.size} pixels have another class"
    assert len(np.unique(expected)) >= 2, f"{name}: the expected mask has one class; a constant output could pass"


# ---------------------------------------------------------------- the training process, killed on cue


@dataclass
class Killed:
    returncode: int
    output: str


def train_killed_after_first_checkpoint(args: list[str], api_url: str, log: Path, timeout: float = 300) -> Killed:
    """`pixelmill train ...` in its own process (one torch thread, like the test process), against the session's
    Prefect server, that SIGKILLs itself right after its first checkpoint is stored (tasks/core/faults.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PIXELMILL_"))}
    env |= {"PREFECT_API_URL": api_url, "PREFECT_HOME": str(log.parent / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PIXELMILL_FAULT": "train.checkpoint:1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.run([PIXELMILL, "--verbose", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout, start_new_session=True)
    return Killed(proc.returncode, log.read_text(errors="replace"))
