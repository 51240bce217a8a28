"""Synthetic street scenes with exact class masks: segmentation data for the demo and the tests, no download.

Each scene is drawn back to front from one `np.random.default_rng([seed, i])`: a sky gradient with soft
clouds, a road with lane dashes below a random horizon line, textured buildings with window grids, trees
(noisy green crowns on trunks), thin poles, cars on the road, and small random-coloured clutter labelled
`void` (the ignored class, like CamVid's Unlabelled). Then a random exposure and pixel noise. Sky is the
majority class (~40% of the pixels over many scenes, road ~34%, building ~17%, tree 6%, car 3%, pole 1%), so
"everything is sky" scores ~0.4 pixel accuracy and ~0.07 mean IoU: the baseline a model must beat.

Classes are those of the `scenes` class map (tasks/core/classes.py). Masks are palette PNGs whose pixel
values are the class indices, so `pixelmill ingest FOLDER/images --masks FOLDER/masks` pairs them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.classes import SCENES, to_palette_image

SKY, ROAD, BUILDING, TREE, CAR, POLE, VOID = range(7)
assert SCENES.names == ("sky", "road", "building", "tree", "car", "pole", "void")


@dataclass(frozen=True)
class SceneFiles:
    images: str  # folder URL of the images
    masks: str  # folder URL of the masks, same file names
    names: tuple[str, ...]  # the file names, e.g. scene-0000.png


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """(h, w) float32 noise, roughly N(0, 1), smooth over `cell` pixels: random values on a coarse grid, bilinear."""
    grid = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.Resampling.BILINEAR))


class Canvas:
    """An image and its mask, painted together so that every pixel's label is the thing drawn last there."""

    def __init__(self, w: int, h: int):
        self.image = np.zeros((h, w, 3), np.float32)
        self.mask = np.zeros((h, w), np.uint8)
        self.yy, self.xx = np.mgrid[0:h, 0:w]

    def paint(self, where: np.ndarray, label: int, color: np.ndarray) -> None:
        """color: (3,) or (H, W, 3), only the `where` pixels are taken."""
        self.image[where] = np.broadcast_to(color, self.image.shape)[where]
        self.mask[where] = label

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (self.xx >= x0) & (self.xx < x1) & (self.yy >= y0) & (self.yy < y1)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.xx - cx) / rx) ** 2 + ((self.yy - cy) / ry) ** 2 <= 1


def make_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, class indices (H, W) uint8) of one random street scene."""
    w, h = width, height
    c = Canvas(w, h)
    horizon = rng.uniform(0.55, 0.7) * h  # where the road starts

    # sky: a vertical gradient from a deep top colour to a pale horizon, with soft clouds
    top, bottom = rng.uniform([20, 60, 140], [90, 130, 220]), rng.uniform([150, 170, 200], [220, 230, 250])
    t = (c.yy / horizon).clip(0, 1)[..., None]
    clouds = smooth_noise(rng, h, w, max(4, w // 8)).clip(0, None)[..., None] * rng.uniform(20, 60)
    c.paint(c.yy < horizon, SKY, (1 - t) * top + t * bottom + clouds)

    # road: dark grey asphalt with fine noise and white or yellow lane dashes (still road)
    asphalt = rng.uniform(55, 105) + rng.normal(0, 9, (h, w, 1)) + np.zeros(3)
    lane_y, dash = rng.uniform(horizon + 0.3 * (h - horizon), h - 3), rng.integers(6, 14)
    dashes = (np.abs(c.yy - lane_y) < 1.5) & ((c.xx // dash) % 2 == 0)
    lane_color = np.array([235.0, 235, 230]) if rng.random() < 0.6 else np.array([230.0, 190, 40])
    c.paint(c.yy >= horizon, ROAD, np.where(dashes[..., None], lane_color, asphalt))

    # buildings: boxes standing on the road line, each with its own wall colour and a grid of windows
    x = rng.uniform(-0.1, 0.15) * w
    while x < w:
        bw = rng.uniform(0.12, 0.35) * w
        if rng.random() < 0.75:
            top_y = rng.uniform(0.1, 0.8) * horizon
            wall = rng.choice([[150, 70, 55], [190, 170, 140], [130, 130, 135], [170, 120, 90], [95, 95, 110]])
            wall = wall * rng.uniform(0.8, 1.15) + rng.normal(0, 6, (h, w, 1))
            pitch_x, pitch_y = rng.integers(5, 10), rng.integers(6, 11)
            windows = ((c.xx - int(x)) % pitch_x < pitch_x // 2) & ((c.yy - int(top_y)) % pitch_y < pitch_y // 2)
            glass = rng.uniform([30, 40, 60], [120, 140, 170])
            c.paint(c.rect(x, top_y, x + bw, horizon), BUILDING, np.where(windows[..., None], glass, wall))
        x += bw + rng.uniform(0, 0.1) * w

    # trees: a trunk and a noisy green crown, some in front of the buildings
    for _ in range(rng.integers(0, 4)):
        cx, r = rng.uniform(0, w), rng.uniform(0.05, 0.13) * w
        crown_y = horizon - r - rng.uniform(0.1, 0.3) * horizon
        c.paint(c.rect(cx - r / 6, crown_y, cx + r / 6, horizon), TREE, rng.uniform([70, 45, 20], [110, 75, 40]))
        leaves = rng.uniform([30, 90, 20], [90, 160, 60]) * (1 + 0.25 * rng.standard_normal((h, w, 1)))
        c.paint(c.ellipse(cx, crown_y, r, r * rng.uniform(0.8, 1.2)), TREE, leaves)

    # poles: thin metal posts from the road line up, sometimes with a sign
    for _ in range(rng.integers(0, 4)):
        px, top_y, pw = rng.uniform(0, w), rng.uniform(0.2, 0.6) * horizon, rng.integers(1, 3)
        c.paint(c.rect(px, top_y, px + pw, horizon + rng.uniform(0, 0.1) * (h - horizon)), POLE,
                rng.uniform([60, 60, 60], [120, 120, 125]))
        if rng.random() < 0.4:
            c.paint(c.rect(px - 3, top_y, px + pw + 3, top_y + 6), POLE, rng.uniform([150, 0, 0], [255, 200, 60]))

    # cars: a coloured body with a dark window band and black wheels, standing on the road
    for _ in range(rng.integers(0, 4)):
        cw = rng.uniform(0.12, 0.25) * w
        ch = cw * rng.uniform(0.35, 0.5)
        x0, base = rng.uniform(-0.05 * w, w - 0.5 * cw), rng.uniform(horizon + ch * 0.3, h)
        body = rng.uniform(0, 255, 3) * rng.uniform(0.6, 1.0) + rng.normal(0, 4, (h, w, 1))
        c.paint(c.rect(x0, base - ch, x0 + cw, base - ch * 0.2), CAR, body)
        c.paint(c.rect(x0 + cw * 0.2, base - ch * 1.4, x0 + cw * 0.8, base - ch), CAR, body * 0.9)
        c.paint(c.rect(x0 + cw * 0.25, base - ch * 1.3, x0 + cw * 0.75, base - ch * 1.02), CAR,
                rng.uniform([20, 30, 40], [70, 80, 100]))
        for wx in (x0 + cw * 0.22, x0 + cw * 0.78):
            c.paint(c.ellipse(wx, base - ch * 0.2, ch * 0.22, ch * 0.22), CAR, np.array([20.0, 20, 20]))

    # clutter: small blobs of any colour that no class names, labelled void (ignored)
    for _ in range(rng.integers(0, 3)):
        c.paint(c.ellipse(rng.uniform(0, w), rng.uniform(0, h), *rng.uniform(1.5, 0.04 * w + 2, 2)), VOID,
                rng.uniform(0, 255, 3))

    # the camera: exposure, contrast, sensor noise
    image = (c.image - 128) * rng.uniform(0.8, 1.2) + 128 + rng.uniform(-25, 25)
    image = image + rng.normal(0, rng.uniform(2, 6), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), c.mask


def write_synthetic_scenes(folder: str, n: int, size: tuple[int, int] = (128, 96), seed: int = 0) -> SceneFiles:
    """Write n scenes as `{folder}/images/scene-NNNN.png` (RGB) and `{folder}/masks/scene-NNNN.png` (palette
    PNG of class indices), on any storage URL. Scene i depends only on (seed, i): the same bytes every run."""
    if n < 1 or min(size) < 16:
        raise ValueError(f"need n >= 1 and a size of at least 16x16, got n={n}, size={size}")
    images, masks = storage.join(folder, "images"), storage.join(folder, "masks")
    names = tuple(f"scene-{i:04d}.png" for i in range(n))
    for i, name in enumerate(names):
        image, indices = make_scene(np.random.default_rng([seed, i]), *size)
        storage.write_bytes(storage.join(images, name), _png(Image.fromarray(image)))
        storage.write_bytes(storage.join(masks, name), _png(to_palette_image(indices, SCENES)))
    return SceneFiles(images, masks, names)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


__all__ = ["SceneFiles", "make_scene", "write_synthetic_scenes"]
