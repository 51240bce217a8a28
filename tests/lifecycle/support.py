"""The lifecycle tests' tools: training data per model task, odd input files, the killed training process, and an
independent computation of what `apply` must write (decode with PIL and numpy the documented way, run the
registered weights with plain torch).

Nothing here goes through pixelmill's inference code (tasks/inference, registry.load): the model is rebuilt from
the config stored in its safetensors file (models/checkpoint.py, the weights format), and every decoding rule
(EXIF orientation, CMYK -> RGB, 16-bit -> 8-bit, alpha composited on white, RGB -> L) is written out below.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image

from pixelmill.models.checkpoint import load_model_from_bytes
from pixelmill.tasks.core import storage
from pixelmill.tasks.prep.scenes import make_scene

PIXELMILL = str(Path(sys.executable).parent / "pixelmill")
ORIENTATION = 0x0112
BACKGROUND = 255  # transparency is composited on white (tasks/core/images.py, normalize_mode)


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


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma in PIL's fixed point (what Image.convert('L') computes)."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


WIDE = "wide.png"


def apply_inputs(task: str) -> dict[str, bytes]:
    """name -> file bytes: ordinary pictures and the odd modes, each of its own size (so no two share a CPU batch),
    all but WIDE smaller than one tile, none square (a turned output cannot keep the shape)."""
    base = BASES[task]
    files = {"plain-a.png": png(base(101, 56, 40)), "plain-b.jpg": jpeg(Image.fromarray(base(102, 40, 52))),
             WIDE: png(base(108, 600, 40))}  # wider than a CPU tile (512 for base 8): apply cuts it in two

    grey = luma(base(103, 48, 36)).astype(np.uint16) * 257  # 16-bit: the low byte carries real detail ...
    grey += np.random.default_rng(3).integers(0, 128, grey.shape, dtype=np.uint16)  # ... that rounds away
    files["grey-16bit.png"] = png(Image.fromarray(grey))

    files["cmyk.jpg"] = jpeg(Image.fromarray(base(104, 44, 60)).convert("CMYK"))

    pal = Image.fromarray(base(105, 60, 44)).quantize(31)  # indices 0..30
    idx = np.asarray(pal).copy()
    idx[5:20, 8:30] = 31  # a transparent hole; its palette colour is black, so dropping alpha shows black
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.getpalette()[: 31 * 3] + [0, 0, 0])
    files["palette-transparent.png"] = png(im, transparency=31)

    rgba = np.dstack([base(106, 52, 36), np.full((36, 52), 255, np.uint8)])
    rgba[10:30, 20:44] = (0, 0, 0, 0)  # fully transparent black: white after compositing
    files["rgba.png"] = png(rgba)

    shown = base(107, 36, 60)  # what a person sees: 36 wide, 60 high
    stored = np.rot90(shown, 1)  # orientation 6 turns the stored pixels 90 degrees clockwise to show them
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    files["exif-rotated.jpg"] = jpeg(Image.fromarray(np.ascontiguousarray(stored)), exif=exif)
    return files


def _decode(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixels (H, W) or (H, W, 3) uint8 before compositing, alpha (H, W) or None), EXIF orientation applied."""
    im = Image.open(io.BytesIO(data))
    im.load()
    orientation = im.getexif().get(ORIENTATION, 1)
    alpha = None
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.rint(np.asarray(im).astype(np.float64) / 257).astype(np.uint8)
    elif im.mode == "CMYK":
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


def decode_reference(data: bytes, mode: str) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8, decoded independently of pixelmill: EXIF orientation applied, 16-bit scaled
    to 8 (/257, rounded), CMYK -> RGB (PIL's naive formula, written out), palette looked up, alpha composited on
    white, then RGB <-> L as the model's input channels ask."""
    arr, alpha = _decode(data)
    if alpha is not None:
        assert set(np.unique(alpha)) <= {0, 255}, "only all-or-nothing alpha composites without rounding"
        arr = np.where((alpha == 255)[..., None] if arr.ndim == 3 else alpha == 255, arr, BACKGROUND).astype(np.uint8)
    if mode == "L":
        return arr if arr.ndim == 2 else luma(arr)
    return arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)


def reference_alpha(data: bytes) -> np.ndarray | None:
    """The input's transparency as displayed (EXIF applied), or None when it is opaque."""
    return _decode(data)[1]


# ---------------------------------------------------------------- the model, without pixelmill's inference


def load_weights(version_uri: str) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(storage.read_bytes(storage.join(version_uri, "weights.safetensors")))


def load_net(version_uri: str) -> torch.nn.Module:
    """The registered model rebuilt from the config stored in its weights file (no registry code)."""
    return load_model_from_bytes(storage.read_bytes(storage.join(version_uri, "weights.safetensors"))).eval()


@torch.inference_mode()
def forward(net: torch.nn.Module, arr: np.ndarray) -> torch.Tensor:
    """(C, H*s, W*s) float output of one whole image (H, W[, C]) uint8."""
    hwc = arr if arr.ndim == 3 else arr[..., None]
    x = torch.from_numpy(np.array(hwc)).permute(2, 0, 1).float().div(255)[None]  # np.array: a writable copy
    return net(x)[0]


def to_rgb8(y: torch.Tensor) -> np.ndarray:
    return y.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def in_mode(net: torch.nn.Module) -> str:
    return "L" if net.config.get("in_channels", 3) == 1 else "RGB"


def check_image_output(name: str, expected: np.ndarray, out: Image.Image, alpha: np.ndarray | None = None,
                       seams: bool = False) -> None:
    """Restoration and colorize: the same pixels within 1 level (float order of a batched forward); `seams`: an
    image apply cut in tiles, where the feathered blend at the seams explains more (< 0.5 dB by the README).
    An output with transparency carries the input's alpha resized to it (bicubic); one without it has the
    transparency composited on white (what `expected` was computed from)."""
    got = np.asarray(out.convert("RGB"))
    assert got.shape == expected.shape, f"{name}: output {got.shape} != expected {expected.shape} (turned?)"
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    if seams:
        close = (diff <= 1).mean()
        assert close > 0.99 and diff.mean() < 0.1, (f"{name}: only {close:.1%} of the values within 1 level of a "
                                                    f"whole-image forward (mean {diff.mean():.2f}, max {diff.max()})")
    else:
        assert diff.max() <= 1, (f"{name}: {int((diff > 1).sum())} of {diff.size} values differ by more than 1 "
                                 f"level (max {diff.max()}, mean output {got.mean():.1f} vs {expected.mean():.1f})")
    assert expected.std() > 5, f"{name}: the expected output is flat; a constant output could pass"
    if "A" in out.getbands() or "transparency" in out.info:
        have = np.asarray(out.convert("RGBA"))[..., 3]
        want = np.full(have.shape, 255, np.uint8) if alpha is None else \
            np.asarray(Image.fromarray(alpha).resize(out.size, Image.Resampling.BICUBIC))
        worst = np.abs(have.astype(np.int16) - want.astype(np.int16)).max()
        assert worst <= 1, f"{name}: the output's alpha is not the input's (off by up to {worst})"


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
