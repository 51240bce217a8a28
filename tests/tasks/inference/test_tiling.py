"""Tiling: the plan covers every pixel, blending is exact for an identity model, seams stay invisible."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pixelmill.models.factory import build_model
from pixelmill.tasks.inference.tiling import (
    Blender,
    plan_tiles,
    run_tiled,
    tile_span,
    to_indices,
    to_pixels,
)
from tests.helpers import make_image

torch.set_num_threads(1)


def to_logits(x: torch.Tensor, dtype=None) -> np.ndarray:
    """A `finish` that keeps the blended float outputs, (H, W, C)."""
    return x.permute(1, 2, 0).numpy().copy()


def image_tensor(w: int, h: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.array(make_image(w, h, seed=seed))).permute(2, 0, 1).contiguous()  # (3, H, W)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.mark.parametrize(("length", "tile", "overlap"),
                         [(1, 8, 0), (8, 8, 3), (9, 8, 3), (100, 32, 7), (257, 64, 63), (612, 512, 32),
                          (1000, 256, 32), (513, 512, 0), (8000, 512, 32), (97, 10, 9)])
def test_tile_span_covers_with_the_overlap_in_the_fewest_smallest_tiles(length, tile, overlap):
    size, starts = tile_span(length, tile, overlap)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + size] = True
    assert covered.all() and starts[0] == 0 and starts[-1] + size == length and size <= tile
    assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:], strict=False))  # overlap kept
    n = len(starts)
    assert n == (1 if length <= tile else math.ceil((length - overlap) / (tile - overlap)))  # fewest tiles
    assert n == 1 or (size - 1) * n - (n - 1) * overlap < length  # one pixel less would not cover


@pytest.mark.parametrize("grid", [2, 4, 8, 16, 32])
def test_tiles_start_on_the_grid_and_keep_the_overlap(grid):
    for length in (33, 100, 257, 612, 1001, 4097):
        for tile, overlap in ((64, 8), (128, 32), (160, 32), (512, 32), (512, 64)):
            size, starts = tile_span(length, tile, overlap, grid)
            assert starts[0] == 0 and starts[-1] + size == length and size <= tile, (length, tile, overlap)
            assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:], strict=False))
            if tile - overlap >= 2 * grid:
                assert all(s % grid == 0 for s in starts), (length, tile, overlap, starts)
                # the grid costs each step between starts less than 2 grid pixels of the tile's advance
                assert len(starts) <= max(1, math.ceil((length - overlap) / (tile - overlap - 2 * grid))), starts
            else:  # no room for the grid's margins: planned without it
                assert (size, starts) == tile_span(length, tile, overlap)


def test_a_half_size_net_tiled_on_its_grid_matches_the_whole_image_away_from_the_borders():
    """A 2-level net at half size pools on a grid of 8 input pixels: tiles that start off it were computed on
    shifted grids all over (12% of the logits off by > 1e-4, and 1.7% of a trained net's classes in the
    lifecycle test); on it, only the bands near the tiles' borders differ."""
    torch.manual_seed(0)
    model = build_model({"arch": "unet-plain", "out_channels": 5, "base": 8, "depth": 2, "input_scale": 0.5}).eval()
    forward = torch.inference_mode()(model)
    img = image_tensor(600, 108)
    [(_, whole)] = run_tiled(forward, [(0, img)], 1024, 0, 1, 1, channels=5, finish=to_logits)
    off = {}
    for grid in (1, 8):
        [(_, tiled)] = run_tiled(forward, [(0, img)], 160, 32, 1, 4, channels=5, finish=to_logits, grid=grid)
        off[grid] = float((np.abs(whole - tiled).max(-1) > 1e-4).mean())
    assert off[8] < 0.04 and off[8] < off[1] / 3, off


def test_a_side_just_over_the_tile_is_not_computed_twice():
    assert tile_span(612, 512, 32) == (322, [0, 290])  # 644 pixels of work for 612, not 1024


def test_tile_span_rejects_an_overlap_as_large_as_the_tile():
    with pytest.raises(ValueError, match="overlap < tile"):
        tile_span(100, 16, 16)


@pytest.mark.parametrize(("w", "h", "tile", "overlap", "scale"),
                         [(37, 23, 16, 5, 1), (101, 67, 32, 7, 1), (50, 31, 17, 3, 2), (29, 41, 16, 6, 4),
                          (64, 64, 64, 8, 1), (24, 200, 33, 1, 2)])
def test_identity_model_gives_the_input_back_exactly(w, h, tile, overlap, scale):
    img = image_tensor(w, h)

    def upscale_nearest(x):  # an "identity" at scale s: each pixel repeated, so the exact answer is known
        return x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)

    [(key, out)] = list(run_tiled(upscale_nearest, [("a", img)], tile, overlap, scale, batch_size=3, channels=3))
    want = upscale_nearest(img[None].float())[0].to(torch.uint8).permute(1, 2, 0).numpy()
    assert key == "a" and out.shape == (h * scale, w * scale, 3)
    np.testing.assert_array_equal(out, want)


def test_blender_holds_a_band_not_the_whole_image():
    h, w, tile, overlap = 300, 40, 32, 8
    blender = Blender(h, w, 3, 1, overlap, to_pixels)
    biggest = 0
    for t in plan_tiles(h, w, tile, overlap):
        blender.add(t, torch.full((3, t.h, t.w), 0.5))
        biggest = max(biggest, blender.acc.shape[1])
    assert blender.result().shape == (h, w, 3)
    assert biggest <= 2 * tile  # float rows in flight: about one tile row, not 300


def residual_model(scale: int) -> torch.nn.Module:
    """A U-Net that changes the image a little, like a trained restoration model (random head, small)."""
    torch.manual_seed(0)
    model = build_model({"arch": "unet-plain", "scale": scale, "base": 8, "depth": 2, "residual": True}).eval()
    with torch.no_grad():
        head = model.head[0]
        head.weight.normal_(0, 4.0)
        head.bias.zero_()
    return model


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_tiled_and_untiled_differ_by_less_than_half_a_db(scale):
    """A 160x120 image fits in one tile and also goes through 64-pixel tiles: no visible seams."""
    model = residual_model(scale)
    img = image_tensor(160, 120, seed=3)
    forward = torch.inference_mode()(model)
    [(_, whole)] = run_tiled(forward, [(0, img)], tile=256, overlap=0, scale=scale, batch_size=1, channels=3)
    [(_, tiled)] = run_tiled(forward, [(0, img)], tile=64, overlap=16, scale=scale, batch_size=4, channels=3)
    target = img.permute(1, 2, 0).numpy().repeat(scale, 0).repeat(scale, 1)  # the input, at the output's size
    assert psnr(whole, target) < 40  # the model does change the image
    assert abs(psnr(whole, target) - psnr(tiled, target)) < 0.5
    assert psnr(whole, tiled) > 35  # and the two results are close to each other, not just equally far


def test_segmentation_logits_are_blended_before_the_argmax():
    torch.manual_seed(0)
    model = build_model({"arch": "unet-plain", "out_channels": 5, "base": 8, "depth": 2}).eval()
    img = image_tensor(150, 90, seed=1)
    forward = torch.inference_mode()(model)
    [(_, whole)] = run_tiled(forward, [(0, img)], 256, 0, 1, 1, channels=5, finish=to_indices)
    [(_, tiled)] = run_tiled(forward, [(0, img)], 48, 16, 1, 4, channels=5, finish=to_indices)
    assert whole.shape == tiled.shape == (90, 150) and whole.dtype == np.uint8
    assert whole.max() < 5 and (whole == tiled).mean() > 0.97


def test_small_images_share_batches_and_come_back_complete():
    sizes = [(60, 50), (64, 40), (30, 30), (200, 130), (61, 49)]
    batches = []

    def forward(x):
        batches.append(x.shape[0])
        return x

    images = [(i, image_tensor(w, h, seed=i)) for i, (w, h) in enumerate(sizes)]
    got = dict(run_tiled(forward, images, tile=64, overlap=8, scale=1, batch_size=4, channels=3))
    assert sorted(got) == list(range(len(sizes)))
    for i, img in images:
        np.testing.assert_array_equal(got[i], img.permute(1, 2, 0).numpy())
    assert max(batches) == 4 and len(batches) < sum(len(plan_tiles(h, w, 64, 8)) for w, h in sizes)


def test_without_padding_only_equal_shapes_share_a_batch_and_batch_pixels_cap_it():
    shapes = []

    def forward(x):
        shapes.append(tuple(x.shape))
        return x

    sizes = [(40, 30)] * 5 + [(41, 30), (50, 50)]
    images = [(i, image_tensor(w, h, seed=i)) for i, (w, h) in enumerate(sizes)]
    got = dict(run_tiled(forward, images, tile=64, overlap=8, scale=1, batch_size=16, channels=3, multiple=1,
                         batch_pixels=3 * 40 * 30))
    for i, img in images:
        np.testing.assert_array_equal(got[i], img.permute(1, 2, 0).numpy())
    assert sorted(shapes) == sorted([(3, 3, 30, 40), (2, 3, 30, 40), (1, 3, 30, 41), (1, 3, 50, 50)])


def test_none_flushes_partial_batches_so_a_slow_reader_never_stalls_the_model():
    seen = []

    def forward(x):
        seen.append(x.shape[0])
        return x

    gen = run_tiled(forward, [("a", image_tensor(40, 40)), None], tile=64, overlap=8, scale=1, batch_size=16,
                    channels=3)
    key, _ = next(gen)
    assert key == "a" and seen == [1]
