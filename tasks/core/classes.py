"""Class maps for semantic segmentation: class names, display colours and the ignored label.

A mask is an image of class indices: a palette (P) or grey (L) PNG whose pixel values are the indices
themselves, or an RGB image colour-coded with the map's colours. `mask_to_indices` turns either into an
(H, W) uint8 array and refuses any value or colour the map does not name: a wrong label must stop the work
with a message, never become a silently wrong class.

The ignored label (`ignore_index`) is either a class of the map (CamVid's Unlabelled, 11) or a value past
its last class (255, the border label of Pascal VOC's palette masks); losses and metrics skip its pixels.

Maps come from the presets (`camvid`, `scenes`) or from a YAML file with the same fields, e.g.:

    names: [background, cat, dog]
    colors: [[0, 0, 0], [255, 128, 0], [0, 128, 255]]   # optional: Pascal VOC's palette by default
    ignore_index: 255                                    # optional
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pixelmill.tasks.core.errors import ConfigError

RGB = tuple[int, int, int]


def voc_palette(n: int) -> list[RGB]:
    """Pascal VOC's colour map: n distinct colours (n <= 256), spreading the bits of each index over R, G, B."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


class ClassMap(BaseModel):
    """Class `i` is `names[i]`, drawn in `colors[i]`; pixels labelled `ignore_index` count for nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    names: tuple[str, ...] = Field(min_length=1, max_length=256)
    colors: tuple[tuple[int, int, int], ...] = ()  # empty: Pascal VOC's palette
    ignore_index: int | None = Field(None, ge=0, le=255)

    @model_validator(mode="before")
    @classmethod
    def _default_colors(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("colors") and isinstance(data.get("names"), list | tuple):
            data = {**data, "colors": voc_palette(min(len(data["names"]), 256))}
        return data

    @model_validator(mode="after")
    def _check(self) -> ClassMap:
        if len(self.colors) != len(self.names):
            raise ValueError(f"colors: {len(self.colors)} colours for {len(self.names)} names")
        for i, color in enumerate(self.colors):
            if not all(0 <= v <= 255 for v in color):
                raise ValueError(f"colors.{i}: {list(color)} has a value outside 0-255")
        for what, values in (("names", self.names), ("colors", self.colors)):
            seen: dict = {}
            for i, v in enumerate(values):
                if v in seen:  # a repeated colour would make RGB masks ambiguous
                    raise ValueError(f"{what}.{i}: {v!r} repeats {what}.{seen[v]}")
                seen[v] = i
        return self

    @property
    def num_classes(self) -> int:
        """The number of named classes: a segmentation model's output channels (the ignored one included)."""
        return len(self.names)

    @property
    def evaluated(self) -> list[int]:
        """The classes that metrics score: every class but the ignored one."""
        return [c for c in range(self.num_classes) if c != self.ignore_index]

    def valid_values(self) -> np.ndarray:
        """(256,) bool: which 8-bit mask values this map accepts."""
        ok = np.zeros(256, bool)
        ok[: self.num_classes] = True
        if self.ignore_index is not None:
            ok[self.ignore_index] = True
        return ok

    def describe(self) -> str:
        ignore = f", ignore {self.ignore_index}" if self.ignore_index is not None else ""
        return f"class map {self.name!r} (values 0-{self.num_classes - 1}{ignore})"


CAMVID = ClassMap(
    name="camvid",
    names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist", "Unlabelled"),
    # the SegNet tutorial's CamVid display colours
    colors=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
            (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 0)),
    ignore_index=11,
)

# The synthetic street scenes of tasks/prep/scenes.py; "void" marks clutter no model is asked to name.
SCENES = ClassMap(
    name="scenes",
    names=("sky", "road", "building", "tree", "car", "pole", "void"),
    colors=((128, 128, 128), (128, 64, 128), (128, 0, 0), (128, 128, 0), (64, 0, 128), (192, 192, 128), (0, 0, 0)),
    ignore_index=6,
)

PRESETS: dict[str, ClassMap] = {"camvid": CAMVID, "scenes": SCENES}


def _describe(error: dict) -> str:
    path = ".".join(str(p) for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return f"  {path}: {message}" if path else f"  {message}"


def parse_class_map(data: Any, source: str = "<class map>") -> ClassMap:
    """Validate a class map definition (a dict, as loaded from YAML); ConfigError names every bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a class map must be a mapping of fields, got {type(data).__name__}",
                          "give names: [...], and optionally colors: [[r, g, b], ...] and ignore_index")
    try:
        return ClassMap.model_validate(data)
    except ValidationError as exc:
        lines = "\n".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source}: invalid class map\n{lines}") from None


def load_class_map(name_or_path: str | Path) -> ClassMap:
    """A preset by name (`camvid`, `scenes`), or a class map read from a YAML file (its name: the file's stem)."""
    if str(name_or_path) in PRESETS:
        return PRESETS[str(name_or_path)]
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and not path.is_file():
        raise ConfigError(f"unknown class map {str(name_or_path)!r}",
                          f"use a preset ({', '.join(PRESETS)}) or the path of a .yaml file")
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read class map file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return parse_class_map(data, source=str(path))


# ------------------------------------------------------------------------------------------------ masks


def _first_bad(bad: np.ndarray) -> tuple[int, int]:
    """(x, y) of the first True pixel in reading order."""
    y, x = divmod(int(np.flatnonzero(bad)[0]), bad.shape[1])
    return x, y


def mask_to_indices(mask: Image.Image, class_map: ClassMap) -> np.ndarray:
    """(H, W) uint8 class indices of a mask image; ValueError when a pixel is not a label of the map.

    P, L, 1 and 16-bit grey masks hold the indices themselves (an alpha channel is dropped); RGB and RGBA
    masks are looked up in the map's colours.
    """
    if mask.mode in ("RGB", "RGBA"):
        return _colors_to_indices(np.asarray(mask.convert("RGB")), class_map)
    if mask.mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(mask)
    elif mask.mode in ("LA", "PA"):
        values = np.asarray(mask)[..., 0]
    else:
        raise ValueError(f"mask mode {mask.mode} is not a mask: give palette or grey class indices, or RGB "
                         f"colours of the {class_map.describe()}")
    values = values.astype(np.int64)  # (H, W)
    valid = class_map.valid_values()
    bad = (values < 0) | (values > 255)
    bad[~bad] = ~valid[values[~bad]]
    if bad.any():
        x, y = _first_bad(bad)
        raise ValueError(f"mask value {values[y, x]} at (x={x}, y={y}) is not in the {class_map.describe()}: "
                         f"{int(bad.sum())} pixel(s) with values {sorted(set(np.unique(values[bad]).tolist()))[:8]}")
    return values.astype(np.uint8)


def _colors_to_indices(rgb: np.ndarray, class_map: ClassMap) -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) uint8 indices through the map's colour table."""
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]  # (H, W)
    table = np.array([(r << 16) | (g << 8) | b for r, g, b in class_map.colors], np.int32)
    order = np.argsort(table)
    pos = np.searchsorted(table[order], codes).clip(0, len(table) - 1)  # (H, W)
    bad = table[order][pos] != codes
    if bad.any():
        x, y = _first_bad(bad)
        unknown = len(np.unique(codes[bad]))
        raise ValueError(f"mask colour {tuple(int(v) for v in rgb[y, x])} at (x={x}, y={y}) is not in the "
                         f"{class_map.describe()}: {int(bad.sum())} pixel(s) in {unknown} unknown colour(s)")
    return order[pos].astype(np.uint8)


def palette(class_map: ClassMap) -> np.ndarray:
    """(256, 3) uint8: each value's display colour; values outside the map (an ignore of 255) are black."""
    table = np.zeros((256, 3), np.uint8)
    table[: class_map.num_classes] = class_map.colors
    return table


def colorize(indices: np.ndarray, class_map: ClassMap) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 RGB in the map's colours; ValueError for a value not in the map."""
    indices = np.asarray(indices)
    values = indices.astype(np.int64)
    bad = (values < 0) | (values > 255)
    bad[~bad] = ~class_map.valid_values()[values[~bad]]
    if bad.any():
        x, y = _first_bad(bad)
        raise ValueError(f"value {values[y, x]} at (x={x}, y={y}) is not in the {class_map.describe()}")
    return palette(class_map)[values]


def to_palette_image(indices: np.ndarray, class_map: ClassMap) -> Image.Image:
    """A P-mode image whose pixel values are the indices and whose palette is the map's colours: a mask
    file that viewers show in colour and `mask_to_indices` reads back exactly."""
    colorize(indices, class_map)  # the same checks
    im = Image.fromarray(np.asarray(indices, np.uint8), "P")
    im.putpalette(palette(class_map).ravel().tolist())
    return im


def overlay(image: Image.Image | np.ndarray, indices: np.ndarray, class_map: ClassMap,
            alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8: the image blended with the class colours (`alpha` of colour); ignored pixels show the
    image alone, so void regions don't read as a class."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    indices = np.asarray(indices)
    if rgb.shape[:2] != indices.shape or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image {rgb.shape} and indices {indices.shape} do not match (need (H, W, 3) and (H, W))")
    colors = colorize(indices, class_map).astype(np.float32)  # (H, W, 3)
    blended = (1 - alpha) * rgb.astype(np.float32) + alpha * colors
    if class_map.ignore_index is not None:
        keep = indices == class_map.ignore_index
        blended[keep] = rgb[keep]
    return np.rint(blended).astype(np.uint8)


__all__ = ["CAMVID", "PRESETS", "SCENES", "ClassMap", "colorize", "load_class_map", "mask_to_indices", "overlay",
           "palette", "parse_class_map", "to_palette_image", "voc_palette"]
