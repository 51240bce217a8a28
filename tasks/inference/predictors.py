"""A predictor per model task, built from the model card: everything about one image that is not tiling.

    prepare(data)        bytes -> the model's input pixels (mode L or RGB, alpha composited) and what the
                         encoder needs later (the input's alpha, the image for an overlay)
    finish               blended tile outputs -> the result array (uint8 RGB, or class indices)
    encode(out, prep)    the result -> the files to write: {"output": (suffix, bytes), other kinds...}

The pipeline (tasks/inference/pipeline.py) runs any predictor over tiles and batches and never asks which
task it is; tasks/core/model_tasks.py names each task's predictor class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image

from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.classes import overlay, to_palette_image
from pixelmill.tasks.core.errors import ConfigError
from pixelmill.tasks.core.images import DEFAULT_MAX_PIXELS, ImageError, normalize_mode, open_image
from pixelmill.tasks.core.model_tasks import MODEL_TASKS, import_path
from pixelmill.tasks.inference.outputs import EXTENSIONS, PIL_FORMATS, alpha_of, encode, with_alpha
from pixelmill.tasks.inference.tiling import to_indices, to_rgb8


@dataclass
class Prepared:
    pixels: np.ndarray  # (H, W) or (H, W, C) uint8: the model's input
    alpha: Image.Image | None = None  # the input's transparency, for the encoder to put back
    image: np.ndarray | None = None  # the RGB image, kept only when an overlay is drawn on it


def decode(data: bytes, mode: str, max_pixels: int, keep_alpha: bool) -> tuple[np.ndarray, Image.Image | None]:
    """(the model's input pixels, the input's alpha when keep_alpha and it has one), or ImageError."""
    im, _ = open_image(data, max_pixels)
    try:
        alpha = alpha_of(im) if keep_alpha else None
        img = normalize_mode(im, mode)  # transparency composited on white, as in training
    except ImageError:
        raise
    except Exception as exc:  # an odd mode PIL cannot convert
        raise ImageError("unsupported", f"cannot convert mode {im.mode} ({exc})") from None
    pixels = np.asarray(img)
    img.close()
    return pixels, alpha


@dataclass
class Encoded:
    files: dict[str, tuple[str, bytes]]  # kind -> (suffix after the output's stem, bytes); "output" first
    notes: list[str] = field(default_factory=list)  # for a person: what the format could not keep


class ImagePredictor:
    """Image in, image out (restoration): RGB in, uint8 RGB out; the input's alpha goes back on the output
    (resized for super-resolution) in formats that keep it."""

    mode: ClassVar[str] = "RGB"

    def __init__(self, card: ModelCard, format: str = "png", quality: int = 92, overlay: bool = False):
        self.card, self.format, self.quality, self.overlay = card, format, quality, overlay

    @property
    def channels(self) -> int:
        return self.card.out_channels

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    finish = staticmethod(to_rgb8)

    def prepare(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
        return Prepared(*decode(data, self.mode, max_pixels, keep_alpha=True))

    def encode(self, out: np.ndarray, prepared: Prepared) -> Encoded:
        img, note = with_alpha(Image.fromarray(out), prepared.alpha, PIL_FORMATS[self.format])
        return Encoded({"output": (f".{self.extension}", encode(img, self.format, self.quality))},
                       [note] if note else [])


class RestorationPredictor(ImagePredictor):
    pass


class ColorizePredictor(ImagePredictor):
    """Grey in (mode L, one channel), colour out."""

    mode = "L"


class SegmentationPredictor:
    """RGB in, class indices out: a palette PNG whose pixel values are the indices (what tools read) and whose
    palette is the class map's colours; with `overlay`, also the classes blended on the image."""

    mode: ClassVar[str] = "RGB"
    extension = "png"  # indices must stay lossless, whatever format the run asks of images
    finish = staticmethod(to_indices)

    def __init__(self, card: ModelCard, format: str = "png", quality: int = 92, overlay: bool = False):
        if card.classes is None:
            raise ConfigError(f"segmentation model {card.ref} has no class map in its config.json",
                              "retrain it: pixelmill writes the class map with every segmentation model")
        self.card, self.overlay, self.classes = card, overlay, card.classes

    @property
    def channels(self) -> int:
        return self.card.out_channels

    def prepare(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
        pixels, _ = decode(data, self.mode, max_pixels, keep_alpha=False)
        return Prepared(pixels, image=pixels if self.overlay else None)

    def encode(self, out: np.ndarray, prepared: Prepared) -> Encoded:
        files = {"output": (".png", encode(to_palette_image(out, self.classes), "png", 0))}
        if prepared.image is not None:
            files["overlay"] = (".overlay.png", encode(Image.fromarray(overlay(prepared.image, out, self.classes)),
                                                       "png", 0))
        return Encoded(files)


PREDICTORS: dict[str, type] = {name: import_path(task.predictor) for name, task in MODEL_TASKS.items()}


def predictor_class(card: ModelCard) -> type:
    return PREDICTORS[card.task]


def build_predictor(card: ModelCard, format: str = "png", quality: int = 92, overlay: bool = False):
    """The predictor of the card's task, writing `format` at `quality` (and overlays, where a task has them)."""
    return predictor_class(card)(card, format=format, quality=quality, overlay=overlay)
