"""Tiling: run a model over images of any size in overlapping tiles, blended so that no seam shows.

    plan_tiles(H, W, tile, overlap, grid) row-major boxes covering the image, all of one size (at most
                                          tile x tile, just large enough for the overlap), starting on
                                          multiples of the network's stride
    Blender                               adds tile outputs with feathered weights and finishes output rows
                                          as soon as no later tile touches them (a band, not the whole image,
                                          is ever held in float)
    run_tiled(forward, images, ...)       the loop: tiles of many images share batches; yields each image's
                                          finished output as soon as its last tile is back

Weights are products of linear ramps over the overlap on the sides a tile shares with another tile (1 at the
image border), strictly positive, and the output is sum(w * y) / sum(w): an identity model gives its input
back exactly, whatever the size and overlap. Works for restoration (scale x1/x2/x4: outputs are
scale * tile) and for segmentation logits (blended before the argmax).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

# On a GPU, tiles are padded up to a multiple of this so that images of slightly different sizes share a
# shape, hence a batch. Not on a CPU: there a batch is no faster per pixel than one tile, and padding a
# 408x612 tile to 448x640 measured +46% time (the U-Nets pad only to their stride: 8 for unet-plain).
SHAPE_MULTIPLE = 64


@dataclass(frozen=True)
class Tile:
    y: int
    x: int
    h: int
    w: int


def tile_span(length: int, tile: int, overlap: int, grid: int = 1) -> tuple[int, list[int]]:
    """(size, starts): the fewest tiles of one size <= tile that cover [0, length) with neighbours sharing
    >= overlap pixels, the size as small as that allows, every start a multiple of `grid`.

    Equal, just-large-enough tiles: a 612-pixel side at tile 512 is two tiles of 322, not two of 512 (which
    computed 1024 pixels for 612); work per pixel on a CPU also falls with the tile's size (cache).

    `grid` is the network's stride in input pixels (2**depth for unet-plain, 32 for the ResNet U-Nets, over
    input_scale for a net that works at a smaller size): a tile that starts on it is pooled on the whole
    image's grid and differs from the whole image's result only near its borders. Off it, a tile's deepest
    features were a few pixels off all over it (a half-size segmentation net changed 1.7% of a wide image's
    classes, far from any seam). On the grid a tile may be a few pixels larger (its size is length minus a
    multiple of grid); a grid the tile has no room for (tile - overlap < 2 grid) is dropped.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return length, [0]
    n = -(-(length - overlap) // (tile - overlap))  # >= 2
    if grid == 1 or tile - overlap < 2 * grid:
        size = -(-(length + (n - 1) * overlap) // n)  # <= tile, and n * size - (n - 1) * overlap >= length
        return size, [i * (length - size) // (n - 1) for i in range(n)]
    while True:
        least = -(-(length + (n - 1) * overlap) // n)
        for size in range(least + (length - least) % grid, tile + 1, grid):  # length - size on the grid
            gap = (size - overlap) // grid * grid  # the widest step between starts on the grid
            if (n - 1) * gap >= length - size:
                steps = (length - size) // grid
                return size, [grid * (i * steps // (n - 1)) for i in range(n)]
        n += 1


def plan_tiles(height: int, width: int, tile: int, overlap: int, grid: int = 1) -> list[Tile]:
    """Row-major tiles, all of one size, covering a height x width image (one tile when it fits)."""
    th, ys = tile_span(height, tile, overlap, grid)
    tw, xs = tile_span(width, tile, overlap, grid)
    return [Tile(y, x, th, tw) for y in ys for x in xs]


def _ramp(n: int, ramp: int, start: bool, end: bool) -> torch.Tensor:
    """1D weights: rising over `ramp` samples at a start shared with a neighbour, falling at such an end."""
    w = torch.ones(n)
    ramp = min(ramp, n // 2)
    if ramp:
        edge = torch.arange(1, ramp + 1, dtype=torch.float32) / (ramp + 1)  # > 0: every pixel counts
        if start:
            w[:ramp] = edge
        if end:
            w[n - ramp:] = edge.flip(0)
    return w


def feather(t: Tile, height: int, width: int, overlap: int, scale: int = 1) -> torch.Tensor:
    """(h*scale, w*scale) blending weights of a tile: ramps only where it meets another tile."""
    wy = _ramp(t.h * scale, overlap * scale, t.y > 0, t.y + t.h < height)
    wx = _ramp(t.w * scale, overlap * scale, t.x > 0, t.x + t.w < width)
    return wy[:, None] * wx[None, :]


PEAKS = {torch.uint8: 255, torch.uint16: 65535}  # full scale of the integer pixel types an image comes in


def to_pixels(rows: torch.Tensor, dtype: torch.dtype = torch.uint8) -> np.ndarray:
    """(C, h, W) float in [0, 1] -> (h, W, C) integer pixels of the input's type (uint8 or uint16), rounded like a
    PNG save: a 16-bit input comes out at 16 bits, never through an 8-bit step."""
    scaled = rows.clamp(0, 1).mul(PEAKS[dtype]).round().permute(1, 2, 0)
    return scaled.to(torch.uint8).numpy() if dtype == torch.uint8 else scaled.to(torch.int32).numpy().astype(np.uint16)


def to_indices(rows: torch.Tensor, dtype: torch.dtype = torch.uint8) -> np.ndarray:
    """(classes, h, W) blended logits -> (h, W) uint8 class indices."""
    return rows.argmax(0).to(torch.uint8).numpy()


class Blender:
    """Accumulates one image's tile outputs (given in plan order) into its finished output array.

    Only a band of rows that a future tile can still touch is kept in float; rows above the next tile row's
    start are divided by their weight, finished (`finish`: to uint8 or to class indices) and stored.
    """

    def __init__(self, height: int, width: int, channels: int, scale: int, overlap: int,
                 finish: Callable[[torch.Tensor], np.ndarray]):
        # finish: (C, rows, W*s) float -> the stored rows; run_tiled binds the input's pixel type into it
        self.height, self.width, self.scale, self.overlap, self.finish = height, width, scale, overlap, finish
        self.channels = channels
        self.out: np.ndarray | None = None
        self.top = 0  # first output row not finished yet
        self.acc = torch.zeros(channels, 0, width * scale)  # (C, band, W*s)
        self.wsum = torch.zeros(0, width * scale)

    def _finish_until(self, row: int) -> None:
        n = row - self.top
        if n <= 0:
            return
        done = self.finish(self.acc[:, :n] / self.wsum[:n])
        if self.out is None:
            self.out = np.empty((self.height * self.scale, self.width * self.scale, *done.shape[2:]), done.dtype)
        self.out[self.top:row] = done
        self.acc, self.wsum = self.acc[:, n:], self.wsum[n:]
        self.top = row

    def add(self, t: Tile, y: torch.Tensor) -> None:
        """y: (C, h*scale, w*scale) model output of tile t."""
        s = self.scale
        self._finish_until(t.y * s)  # rows above this tile are done: tiles come in row-major order
        bottom = (t.y + t.h) * s - self.top
        if bottom > self.wsum.shape[0]:
            grow = bottom - self.wsum.shape[0]
            self.acc = torch.cat([self.acc, torch.zeros(self.channels, grow, self.acc.shape[2])], 1)
            self.wsum = torch.cat([self.wsum, torch.zeros(grow, self.wsum.shape[1])], 0)
        w = feather(t, self.height, self.width, self.overlap, s)
        rows, cols = slice(t.y * s - self.top, bottom), slice(t.x * s, (t.x + t.w) * s)
        self.acc[:, rows, cols] += y.float() * w
        self.wsum[rows, cols] += w

    def result(self) -> np.ndarray:
        self._finish_until(self.height * self.scale)
        return self.out


def padded_shape(h: int, w: int, tile: int, multiple: int = SHAPE_MULTIPLE) -> tuple[int, int]:
    """The batch shape of an h x w tile: rounded up to `multiple`, never beyond the full tile size."""
    return min(-(-h // multiple) * multiple, max(h, tile)), min(-(-w // multiple) * multiple, max(w, tile))


@dataclass
class _Open:
    blender: Blender
    left: int  # tiles not back from the model yet


def run_tiled(forward: Callable[[torch.Tensor], torch.Tensor], images: Iterable[tuple[Hashable, torch.Tensor] | None],
              tile: int, overlap: int, scale: int, batch_size: int, channels: int,
              finish: Callable[..., np.ndarray] = to_pixels, multiple: int = SHAPE_MULTIPLE,
              batch_pixels: int | None = None, grid: int = 1) -> Iterator[tuple[Hashable, np.ndarray]]:
    """Run `forward` over every image in tiles; yield (key, finished output) as each image completes.

    images: (key, (C, H, W) uint8 or uint16 tensor) items; a None item means "nothing more is ready right now": the
    partly filled batches run instead of waiting (a reader that is slower than the model never stalls it).
    forward: (B, C, h, w) float in [0, 1] -> (B, channels, h*scale, w*scale). Tiles are grouped by shape,
    padded up to `multiple`; each group is FIFO, and all tiles of one image share a shape, so each image's
    tiles reach its Blender in plan order. A batch holds at most batch_size tiles and, when batch_pixels is
    given, at most that many pixels (never fewer than one tile). grid: see `tile_span`.
    """
    groups: dict[tuple[int, int], deque] = {}
    opened: dict[Hashable, _Open] = {}

    def limit(shape: tuple[int, int]) -> int:
        if batch_pixels is None:
            return batch_size
        return max(1, min(batch_size, batch_pixels // (shape[0] * shape[1])))

    def run(shape: tuple[int, int], count: int) -> Iterator[tuple[Hashable, np.ndarray]]:
        group = groups[shape]
        items = [group.popleft() for _ in range(min(count, len(group)))]
        if not group:
            del groups[shape]
        ph, pw = shape
        batch = torch.stack([torch.nn.functional.pad(crop.float().div_(PEAKS[crop.dtype]).unsqueeze(0),
                                                     (0, pw - crop.shape[2], 0, ph - crop.shape[1]),
                                                     mode="replicate")[0] for _, _, crop in items])
        out = forward(batch)  # (B, channels, ph*s, pw*s)
        for (key, t, _), y in zip(items, out, strict=True):
            entry = opened[key]
            entry.blender.add(t, y[:, :t.h * scale, :t.w * scale])
            entry.left -= 1
            if not entry.left:
                del opened[key]
                yield key, entry.blender.result()

    for item in images:
        if item is None:
            for shape in list(groups):
                while shape in groups:
                    yield from run(shape, limit(shape))
            continue
        key, img = item
        _, height, width = img.shape
        plan = plan_tiles(height, width, tile, overlap, grid)
        opened[key] = _Open(Blender(height, width, channels, scale, overlap, partial(finish, dtype=img.dtype)),
                            len(plan))
        for t in plan:
            shape = padded_shape(t.h, t.w, tile, multiple)
            groups.setdefault(shape, deque()).append((key, t, img[:, t.y:t.y + t.h, t.x:t.x + t.w]))
            if len(groups[shape]) >= limit(shape):
                yield from run(shape, limit(shape))
    while groups:
        shape = next(iter(groups))
        yield from run(shape, limit(shape))
