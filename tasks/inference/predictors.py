"""A predictor per model task, built from the model card: everything about one image that is not tiling.

    prepare(data)                      bytes -> the model's input pixels in its working space (sRGB, the channels
                                       it takes; uint8, or uint16 for 16-bit and colour-managed inputs) and what
                                       the encoder needs later (the decoded file's metadata, depth, alpha)
    finish                             blended tile outputs -> the result array (pixels, or class indices)
    encode(out, prep, fmt, provenance) the result -> the files to write, what the format could not keep, and the
                                       checks' columns for the `predictions` row

An output keeps what its input carried: colours back in the input's own ICC space, its bit depth (--depth),
grey as grey, its alpha (resized), its EXIF/XMP/IPTC (tasks/core/metadata.py), plus where it came from.

The pipeline (tasks/inference/pipeline.py) runs any predictor over tiles and batches and never asks which
task it is; tasks/core/model_tasks.py names each task's predictor class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image

from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.classes import overlay, to_palette_image
from pixelmill.tasks.core.colour import Conversion, working_space
from pixelmill.tasks.core.errors import ConfigError
from pixelmill.tasks.core.imageio import Picture, read_picture, write_picture
from pixelmill.tasks.core.images import DEFAULT_MAX_PIXELS, ImageError
from pixelmill.tasks.core.metadata import Metadata, for_output
from pixelmill.tasks.core.model_tasks import MODEL_TASKS, import_path
from pixelmill.tasks.inference.checks import check_output
from pixelmill.tasks.inference.outputs import (
    bleed,
    check_windows,
    dtype_of,
    grey_to_rgb,
    luma,
    mask_png,
    mosaic,
    resize_alpha,
    to_depth,
)
from pixelmill.tasks.inference.tiling import to_indices, to_pixels


@dataclass
class Prepared:
    pixels: np.ndarray | None  # (H, W) or (H, W, C) uint8/uint16: the model's input (the tiler takes it)
    source: Picture | None = None  # the decoded file, its pixels dropped: metadata, depth, mode, alpha
    conversion: Conversion | None = None  # the input's colour space <-> sRGB, None when it is sRGB
    outside: np.ndarray | None = None  # the input's colours beyond sRGB, carried around the model
    grey: bool = False  # the file was grey: a restoration writes grey again
    image: np.ndarray | None = None  # the working-space input the checks compare with (or a segmentation overlay)
    windows: list[tuple[int, int]] | None = None  # where `image` was cut from a large input (outputs.mosaic)


def row_values(columns: dict) -> dict:
    """NaN (a score an image too small cannot have) as null in the catalog."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in columns.items()}


def read(data: bytes, max_pixels: int) -> Picture:
    try:
        return read_picture(data, max_pixels)
    except ImageError:
        raise
    except Exception as exc:  # an odd mode or codec corner no reader handles
        raise ImageError("unsupported", f"cannot decode ({type(exc).__name__}: {exc})") from None


def working_pixels(pic: Picture, mode: str) -> tuple[np.ndarray, Conversion | None, np.ndarray | None]:
    """The model's input: sRGB (converted from the file's ICC profile when it has another), transparent areas
    filled from their edges, in the model's channels (grey repeated for RGB; luma for a grey model); with the
    conversion and the input's colours outside sRGB (see `outside_srgb`)."""
    pixels, conversion, outside = pic.pixels, None, None
    if pixels.ndim == 3:
        conversion = working_space(pic.meta.icc, pic.meta.adobe_rgb)
        if conversion is not None:
            pixels = conversion.to_srgb(pixels)  # uint16: an 8-bit wide-gamut input keeps its precision
            outside = outside_srgb(pic.pixels, pixels, conversion)
    if pic.alpha is not None:
        pixels = bleed(pixels, pic.alpha)
    if mode == "RGB" and pixels.ndim == 2:
        pixels = grey_to_rgb(pixels)
    elif mode == "L" and pixels.ndim == 3:
        pixels = luma(pixels)
    return pixels, conversion, outside


def outside_srgb(source: np.ndarray, srgb: np.ndarray, conversion: Conversion) -> np.ndarray | None:
    """What a wide-gamut input holds beyond sRGB, in its own space at 16 bits: (H, W, 3) int32, or None when
    nothing is outside (beyond rounding).

    The model works in sRGB, so a saturated Adobe RGB red reaches it clipped; added back after the model (resized
    with the image), the part it could not see keeps the input's colours: an identity model gives them back."""
    inside = conversion.from_srgb(srgb, np.uint16).astype(np.int32)
    outside = to_depth(source, 16).astype(np.int32) - inside
    return outside if np.abs(outside).max() > 2 * 257 else None


def add_outside(out16: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """out16 (H', W', 3) uint16 in the input's space plus what lay outside sRGB, resized to it (bicubic)."""
    height, width = out16.shape[:2]
    if outside.shape[:2] != (height, width):
        outside = np.dstack([np.asarray(Image.fromarray(outside[..., c].astype(np.float32), "F")
                                        .resize((width, height), Image.Resampling.BICUBIC)) for c in range(3)])
    return np.clip(np.rint(out16 + outside), 0, 65535).astype(np.uint16)


@dataclass
class Encoded:
    files: dict[str, tuple[str, bytes]]  # kind -> (suffix after the output's stem, bytes); "output" first
    notes: list[str] = field(default_factory=list)  # for a person: what the format could not keep
    columns: dict = field(default_factory=dict)  # for the `predictions` row: output depth, the checks


class ImagePredictor:
    """Image in, image out (restoration): the output in the input's colour space, depth, channels and alpha."""

    mode: ClassVar[str] = "RGB"
    keeps_colour: ClassVar[bool] = True  # the output should have the input's colours (the drift check)

    def __init__(self, card: ModelCard, quality: int = 92, overlay: bool = False, depth: str = "auto",
                 checks: bool = True, metadata: bool = True):
        self.card, self.quality, self.depth, self.checks, self.metadata = card, quality, depth, checks, metadata

    @property
    def channels(self) -> int:
        return self.card.out_channels

    finish = staticmethod(to_pixels)

    def prepare(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
        pic = read(data, max_pixels)
        pixels, conversion, outside = working_pixels(pic, self.mode)
        grey = pic.pixels.ndim == 2
        pic.pixels = None  # the model's input is all that is needed of the pixels from here
        windows = check_windows(*pixels.shape[:2])
        return Prepared(pixels, pic, conversion, outside if self.keeps_colour else None, grey,
                        image=mosaic(pixels, windows).copy() if self.checks else None, windows=windows)

    def encode(self, out: np.ndarray, prepared: Prepared, fmt: str, fields: dict[str, str]) -> Encoded:
        """out: (H, W, C) in the working space, the input's pixel type; fmt: PNG, JPEG, WEBP or TIFF."""
        pic = prepared.source
        columns = {} if prepared.image is None else row_values(check_output(
            prepared.image, mosaic(out, prepared.windows, self.card.scale), colour=self.keeps_colour))
        depth = pic.depth if self.depth == "auto" else int(self.depth)
        if prepared.outside is not None:
            out = add_outside(prepared.conversion.from_srgb(out, np.uint16), prepared.outside)
        elif prepared.conversion is not None:
            out = prepared.conversion.from_srgb(out, dtype_of(depth))
        if prepared.grey and self.keeps_colour:
            out = luma(out)
        out = to_depth(out, depth)
        height, width = out.shape[:2]
        alpha = None if pic.alpha is None else resize_alpha(pic.alpha, width, height, out.dtype)
        kept = pic.meta if self.metadata else Metadata(icc=pic.meta.icc, dpi=pic.meta.dpi)
        meta = for_output(kept, width, height, self.card.scale, fields)
        data, notes = write_picture(out, alpha, fmt, meta, self.quality)
        return Encoded({"output": ("", data)}, [*pic.notes, *notes], columns | {"output_depth": depth})


class RestorationPredictor(ImagePredictor):
    pass


class ColorizePredictor(ImagePredictor):
    """Grey in (mode L, one channel), colour out: only the lightness is expected to stay."""

    mode = "L"
    keeps_colour = False


class SegmentationPredictor:
    """RGB in, class indices out: a palette PNG whose pixel values are the indices (what tools read) and whose
    palette is the class map's colours; with `overlay`, also the classes blended on the image."""

    mode: ClassVar[str] = "RGB"
    finish = staticmethod(to_indices)

    def __init__(self, card: ModelCard, quality: int = 92, overlay: bool = False, depth: str = "auto",
                 checks: bool = True, metadata: bool = True):
        if card.classes is None:
            raise ConfigError(f"segmentation model {card.ref} has no class map in its config.json",
                              "retrain it: pixelmill writes the class map with every segmentation model")
        self.card, self.overlay, self.classes = card, overlay, card.classes

    @property
    def channels(self) -> int:
        return self.card.out_channels

    def prepare(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
        pic = read(data, max_pixels)
        pixels, conversion, _ = working_pixels(pic, self.mode)
        pic.pixels = None
        return Prepared(pixels, pic, conversion, image=to_depth(pixels, 8) if self.overlay else None)

    def encode(self, out: np.ndarray, prepared: Prepared, fmt: str, fields: dict[str, str]) -> Encoded:
        files = {"output": ("", mask_png(to_palette_image(out, self.classes), fields))}
        if prepared.image is not None:
            files["overlay"] = (".overlay.png", mask_png(Image.fromarray(overlay(prepared.image, out, self.classes)),
                                                         fields))
        return Encoded(files)


PREDICTORS: dict[str, type] = {name: import_path(task.predictor) for name, task in MODEL_TASKS.items()}


def predictor_class(card: ModelCard) -> type:
    return PREDICTORS[card.task]


def build_predictor(card: ModelCard, quality: int = 92, overlay: bool = False, depth: str = "auto",
                    checks: bool = True, metadata: bool = True):
    """The predictor of the card's task (and overlays, where a task has them)."""
    return predictor_class(card)(card, quality=quality, overlay=overlay, depth=depth, checks=checks,
                                 metadata=metadata)
