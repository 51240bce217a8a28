"""What inference writes besides the model's pixels: depth, grey and alpha as the input had them, provenance, rows.

    to_depth / luma      the output at the input's bit depth, grey again when the input was grey
    bleed / resize_alpha transparency: colours under it filled from the edges before the model, alpha resized after
    check_windows/mosaic what the checks look at in a large image: a mosaic of windows, so they cost a bounded
                         time and memory per image however large it is
    provenance           the fields every output carries in its metadata (XMP `pixelmill:*`, PNG text chunks)
    mask_png             a segmentation mask (palette PNG) with the same provenance
    prediction_row       a `predictions` row
"""

from __future__ import annotations

import functools
import io
import time

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pixelmill.tasks.core.metadata import Metadata, for_output
from pixelmill.tasks.core.names import storable

PEAK = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


def dtype_of(depth: int) -> np.dtype:
    return np.dtype(np.uint16 if depth == 16 else np.uint8)


def to_depth(pixels: np.ndarray, depth: int) -> np.ndarray:
    """uint8 <-> uint16 by full scale (x257, or /257 rounded): 0 and the peak stay 0 and the peak."""
    want = dtype_of(depth)
    if pixels.dtype == want:
        return pixels
    if want == np.uint16:
        return pixels.astype(np.uint16) * 257
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W) of the same type, ITU-R 601 weights (what Pillow's convert("L") uses)."""
    y = rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)
    return np.clip(np.rint(y), 0, PEAK[rgb.dtype]).astype(rgb.dtype)


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def bleed(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colours of fully transparent pixels filled from the nearest visible ones (pull-push over a pyramid).

    Files store whatever colour under alpha 0 (usually black); a model or a resize mixes it into the edge pixels
    next to it, and the edge comes out dark. Filled with the edge's own colours, it cannot. Visible pixels, soft
    edges included, keep their colour."""
    hidden = alpha == 0
    if not hidden.any() or hidden.all():
        return pixels
    colour = pixels.astype(np.float32).reshape(*pixels.shape[:2], -1)
    weight = (~hidden).astype(np.float32)
    levels = [(colour * weight[..., None], weight)]
    while max(levels[-1][1].shape) > 1:  # pull: sums over 2x2 blocks, up to one pixel
        c, w = levels[-1]
        h2, w2 = -(-c.shape[0] // 2) * 2, -(-c.shape[1] // 2) * 2
        c = np.pad(c, ((0, h2 - c.shape[0]), (0, w2 - c.shape[1]), (0, 0)))
        w = np.pad(w, ((0, h2 - w.shape[0]), (0, w2 - w.shape[1])))
        levels.append((c.reshape(h2 // 2, 2, w2 // 2, 2, -1).sum((1, 3)),
                       w.reshape(h2 // 2, 2, w2 // 2, 2).sum((1, 3))))
    c, w = levels[-1]
    fill = c / np.maximum(w, 1e-12)[..., None]
    for c, w in reversed(levels[:-1]):  # push: where a level saw nothing, take the coarser level's average
        up = np.repeat(np.repeat(fill, 2, 0), 2, 1)[: c.shape[0], : c.shape[1]]
        fill = np.where((w > 0)[..., None], c / np.maximum(w, 1e-12)[..., None], up)
    out = np.where(hidden[..., None], np.rint(fill), colour).astype(pixels.dtype)
    return out.reshape(pixels.shape)


def resize_alpha(alpha: np.ndarray, width: int, height: int, dtype: np.dtype) -> np.ndarray:
    """The input's alpha at the output's size (bicubic, clipped) and bit depth."""
    if alpha.shape != (height, width):
        scaled = Image.fromarray(alpha.astype(np.float32), "F").resize((width, height), Image.Resampling.BICUBIC)
        alpha = np.clip(np.rint(np.asarray(scaled)), 0, PEAK[alpha.dtype]).astype(alpha.dtype)
    return to_depth(alpha, 16 if dtype == np.uint16 else 8)


# Inputs over this many pixels are checked on a mosaic of windows: an 8000x8000 scan checked whole would hold ~3 GiB of
# float images for the colour difference and NIQE. Windows of 384 pixels hold 4x4 of NIQE's 96-pixel blocks at its
# first scale and 2x2 at its second, so the blocks never straddle a seam.
CHECK_PIXELS = 2**21
CHECK_WINDOW = 384


def check_windows(height: int, width: int) -> list[tuple[int, int]] | None:
    """(top, left) of the windows an image is checked on, evenly spread; None: check the whole image."""
    if height * width <= CHECK_PIXELS or min(height, width) < 2 * CHECK_WINDOW:
        return None
    side = max(2, int(CHECK_PIXELS**0.5) // CHECK_WINDOW)

    def spots(length: int) -> list[int]:
        return [round(i * (length - CHECK_WINDOW) / (side - 1)) for i in range(side)]

    return [(top, left) for top in spots(height) for left in spots(width)]


def mosaic(pixels: np.ndarray, windows: list[tuple[int, int]] | None, scale: int = 1) -> np.ndarray:
    """The windows (in input pixels; `scale`: the array is that many times larger) side by side, one row per
    band of windows; the whole array when windows is None."""
    if windows is None:
        return pixels
    size = CHECK_WINDOW * scale
    side = int(len(windows) ** 0.5)
    tiles = [pixels[t * scale:t * scale + size, x * scale:x * scale + size] for t, x in windows]
    return np.concatenate([np.concatenate(tiles[r * side:(r + 1) * side], axis=1) for r in range(side)], axis=0)


@functools.cache
def pixelmill_version() -> str:
    from pixelmill.tasks.core.registry import code_version  # a git call: once per process

    return code_version()


def provenance(card, input_rel: str, input_uri: str, input_sha256: str | None, run_id: str) -> dict[str, str]:
    """What every output says about where it came from (card: the model's ModelCard)."""
    return {"model": card.name, "model_version": card.version, "weights_sha256": card.weights_sha256 or "",
            "input": storable(input_rel), "input_uri": storable(input_uri), "input_sha256": input_sha256 or "",
            "run_id": run_id, "pixelmill_version": pixelmill_version()}


def mask_png(mask: Image.Image, fields: dict[str, str]) -> bytes:
    """A palette mask as PNG, carrying the provenance as XMP and as `pixelmill:KEY` text chunks."""
    info = PngInfo()
    xmp = for_output(Metadata(), mask.width, mask.height, 1, fields).xmp
    if xmp:
        info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"), zip=False)
    for key, value in fields.items():
        info.add_text(f"pixelmill:{key}", value)
    buf = io.BytesIO()
    mask.save(buf, "PNG", pnginfo=info, compress_level=1)  # level 1: ~3x faster than the default, ~10% larger
    return buf.getvalue()


def prediction_row(base: dict, uri: str, version: str, size: int, sha256: str | None, started: float,
                   image_size: tuple[int, int] | None, tiles: int, **fields) -> dict:
    """A `predictions` row: the run's common fields, the input's, and what became of it."""
    row = base | {"input_uri": storable(uri), "input_version": version, "input_bytes": size,
                  "input_sha256": sha256, "seconds": time.perf_counter() - started}
    if image_size:
        row |= {"input_width": image_size[0], "input_height": image_size[1], "tiles": tiles}
    return row | fields
