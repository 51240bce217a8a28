"""Segmentation data: records from the images table, augmentations that keep masks aligned, items that depend
only on (seed, item number), padding with the ignore index, median-frequency weights by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode

from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.classes import CAMVID, ClassMap, colorize, mask_to_indices, to_palette_image
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.training.datasets import SampleStream
from pixelmill.tasks.training.segdata import (
    SegmentationDataset,
    SegRecord,
    augment,
    load_segmentation_records,
    median_frequency_weights,
    pixel_counts,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors on a shared 2-core machine: one thread is faster (see tests/models/conftest.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def blocky_indices(rng: np.random.Generator, h: int, w: int, cell: int, classes: int) -> np.ndarray:
    """(h, w) uint8: flat rectangles of random classes, `cell` pixels a side."""
    grid = rng.integers(0, classes, ((h + cell - 1) // cell, (w + cell - 1) // cell), dtype=np.uint8)
    return np.repeat(np.repeat(grid, cell, 0), cell, 1)[:h, :w]


def write_pair(folder, name: str, image: np.ndarray, indices: np.ndarray, class_map: ClassMap = CAMVID) -> SegRecord:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{name}.png")
    to_palette_image(indices, class_map).save(folder / f"{name}-mask.png")
    return SegRecord(str(folder / f"{name}.png"), str(folder / f"{name}-mask.png"), image.shape[1], image.shape[0])


@pytest.fixture
def records(tmp_path):
    """Three 45x61 photos-like images with blocky CamVid masks (Unlabelled included)."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(3):
        indices = blocky_indices(rng, 45, 61, 6, 12)
        image = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
        out.append(write_pair(tmp_path / "data", f"img{k}", image, indices))
    return out


# ------------------------------------------------------------------------------------------- records


def test_records_come_from_ok_rows_with_masks_in_a_stable_order(tmp_path):
    catalog = Catalog(str(tmp_path / "ws"))
    rows = [
        {"dataset": "d", "uri": "file:///x/b.png", "mask_uri": "file:///m/b.png", "width": 4, "height": 3,
         "status": "ok", "split": "train"},
        {"dataset": "d", "uri": "file:///x/a.png", "mask_uri": "file:///m/a.png", "width": 5, "height": 2,
         "status": "ok", "split": "train"},
        {"dataset": "d", "uri": "file:///x/c.png", "mask_uri": None, "width": 4, "height": 3, "status": "ok",
         "split": "train"},
        {"dataset": "d", "uri": "file:///x/d.png", "mask_uri": "file:///m/d.png", "status": "error",
         "error": "mask_missing: no mask", "split": "train"},
        {"dataset": "d", "uri": "file:///x/e.png", "mask_uri": "file:///m/e.png", "width": 4, "height": 3,
         "status": "ok", "split": "valid"},
    ]
    catalog.write_part("images", "d", "p1", rows[:3])
    catalog.write_part("images", "d", "p2", rows[3:])
    records, skipped = load_segmentation_records(catalog, "d", "train")
    assert records == [SegRecord("file:///x/a.png", "file:///m/a.png", 5, 2),
                       SegRecord("file:///x/b.png", "file:///m/b.png", 4, 3)]
    assert skipped == 2
    assert [r.uri for r in load_segmentation_records(catalog, "d", None)[0]] == [
        "file:///x/a.png", "file:///x/b.png", "file:///x/e.png"]
    assert load_segmentation_records(catalog, "other", "train") == ([], 0)


# ------------------------------------------------------------------------------------------- alignment


def recompute(image: torch.Tensor, class_map: ClassMap) -> np.ndarray:
    """The mask an image drawn in the class colours shows: the nearest class colour of every pixel."""
    rgb = image.permute(1, 2, 0).numpy().astype(np.int32)  # (H, W, 3)
    colors = np.array(class_map.colors, np.int32)  # (K, 3)
    return ((rgb[:, :, None, :] - colors) ** 2).sum(-1).argmin(-1)  # (H, W)


@pytest.mark.parametrize("seed", range(12))
def test_a_mask_drawn_from_the_image_equals_the_mask_of_the_transformed_image(seed):
    # the image *is* its mask in the class colours; black is Unlabelled (11), the ignore index, so the
    # zero padding of the image and the ignore padding of the mask agree too
    rng = np.random.default_rng(seed)
    indices = blocky_indices(rng, 45, 61, 5, 12)
    image = torch.from_numpy(colorize(indices, CAMVID)).permute(2, 0, 1)  # (3, 45, 61) uint8
    x, y = augment(image, torch.from_numpy(indices)[None], np.random.default_rng([seed, 1]), crop=(48, 40),
                   scale_range=(0.5, 1.6), color_jitter=(0, 0, 0, 0), fill=CAMVID.ignore_index,
                   interpolation=InterpolationMode.NEAREST_EXACT)
    assert x.shape == (3, 48, 40) and y.shape == (1, 48, 40) and x.dtype == y.dtype == torch.uint8
    assert np.array_equal(mask_to_indices(Image.fromarray(x.permute(1, 2, 0).numpy()), CAMVID), y[0].numpy())


@pytest.mark.parametrize("seed", range(6))
def test_with_bilinear_images_masks_differ_only_where_interpolation_blurs_a_boundary(seed):
    rng = np.random.default_rng(seed)
    indices = blocky_indices(rng, 90, 120, 20, 11)
    image = torch.from_numpy(colorize(indices, CAMVID)).permute(2, 0, 1)
    x, y = augment(image, torch.from_numpy(indices)[None], np.random.default_rng([seed, 2]), crop=(64, 64),
                   scale_range=(0.5, 2.0), color_jitter=(0, 0, 0, 0), fill=CAMVID.ignore_index)
    mask = y[0].numpy()
    # interior: the 5x5 neighbourhood holds one class (bilinear with antialias reaches 2 px at these scales);
    # never the crop's 2-px border, whose image pixels saw neighbours the crop cut off
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(mask, 2, constant_values=255), (5, 5))
    interior = (windows == mask[:, :, None, None]).all(axis=(2, 3))
    assert interior.mean() > 0.3
    assert np.array_equal(recompute(x, CAMVID)[interior], mask[interior])


def test_colour_jitter_changes_the_image_only():
    rng = np.random.default_rng(0)
    indices = blocky_indices(rng, 30, 40, 5, 12)
    image = torch.from_numpy(rng.integers(0, 256, (3, 30, 40), dtype=np.uint8))
    mask = torch.from_numpy(indices)[None]
    x, y = augment(image, mask, np.random.default_rng(1), crop=None, scale_range=(1, 1), hflip=False,
                   color_jitter=(0.4, 0.4, 0.4, 0.1))
    assert torch.equal(y, mask) and not torch.equal(x, image) and x.shape == image.shape


def test_flip_and_scale_move_image_and_mask_together():
    indices = np.zeros((20, 30), np.uint8)
    indices[:, :10] = 3  # Road on the left third
    image = torch.from_numpy(colorize(indices, CAMVID)).permute(2, 0, 1)
    flips = []
    for i in range(8):
        x, y = augment(image, torch.from_numpy(indices)[None], np.random.default_rng(i), crop=None,
                       scale_range=(2, 2), color_jitter=(0, 0, 0, 0))
        assert y.shape == (1, 40, 60) and x.shape == (3, 40, 60)
        road = (y[0] == 3).numpy()
        assert road.sum() == 40 * 20
        assert road[:, :20].all() or road[:, 40:].all()
        assert np.array_equal(recompute(x, CAMVID)[:, 21:39], y[0, :, 21:39].numpy())
        flips.append(bool(road[:, 40:].all()))
    assert any(flips) and not all(flips)


# ------------------------------------------------------------------------------------------- data set


def test_items_have_the_training_shapes_and_types(records):
    data = SegmentationDataset(records, CAMVID, crop=32, train=True, seed=0)
    x, y = data[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert y.shape == (32, 32) and y.dtype == torch.int64 and y.min() >= 0 and y.max() <= 11
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=4, sampler=SampleStream(len(data), seed=0))))
    assert batch[0].shape == (4, 3, 32, 32) and batch[1].shape == (4, 32, 32)


def test_items_depend_only_on_seed_and_item_number(records):
    a = SegmentationDataset(records, CAMVID, crop=32, train=True, seed=5)
    b = SegmentationDataset(records, CAMVID, crop=32, train=True, seed=5)  # a resumed run's fresh data set
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = a[7]
    assert torch.equal(torch.get_rng_state(), state)  # torch's global RNG is neither used nor moved
    torch.manual_seed(999)
    again = b[7]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(a[7 + len(records)][0], first[0])  # the same image in the next epoch: a new draw
    assert not torch.equal(SegmentationDataset(records, CAMVID, crop=32, seed=6)[7][0], first[0])


def test_eval_mode_is_the_whole_image_or_its_centre(records):
    image = np.array(Image.open(records[1].uri))
    indices = mask_to_indices(Image.open(records[1].mask_uri), CAMVID)
    x, y = SegmentationDataset(records, CAMVID, crop=None, train=False)[1]
    assert torch.equal(x, torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    assert torch.equal(y, torch.from_numpy(indices).long())
    x, y = SegmentationDataset(records, CAMVID, crop=(20, 30), train=False)[1]
    assert torch.equal(y, torch.from_numpy(indices[12:32, 15:45]).long())  # (45 - 20) // 2, (61 - 30) // 2
    x2, y2 = SegmentationDataset(records, CAMVID, crop=(20, 30), train=False)[1]
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_small_images_are_padded_with_the_ignore_index(tmp_path):
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 11, (10, 12), dtype=np.uint8)
    record = write_pair(tmp_path, "small", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), indices)
    x, y = SegmentationDataset([record], CAMVID, crop=24, train=False)[0]
    assert torch.equal(y[:10, :12], torch.from_numpy(indices).long())
    assert (y[10:] == 11).all() and (y[:, 12:] == 11).all() and (x[:, 10:] == 0).all()
    for i in range(5):  # train mode: padding where the scaled image is smaller, never a new class
        x, y = SegmentationDataset([record], CAMVID, crop=24, train=True, scale_range=(0.5, 1.0))[i]
        assert y.shape == (24, 24) and (y == 11).sum() >= 24 * 24 - 12 * 10


def test_without_an_ignore_index_padding_repeats_the_edge(tmp_path):
    binary = ClassMap(names=("background", "object"))
    indices = np.zeros((8, 8), np.uint8)
    indices[:, 6:] = 1
    record = write_pair(tmp_path, "bin", np.zeros((8, 8, 3), np.uint8), indices, binary)
    _, y = SegmentationDataset([record], binary, crop=12, train=False)[0]
    assert (y[:, 6:] == 1).all() and (y[:, :6] == 0).all()


def test_decoded_pairs_are_cached_within_the_budget(records, tmp_path):
    data = SegmentationDataset(records, CAMVID, crop=16, train=True)
    first = data[0]
    Image.new("RGB", (3, 3)).save(records[0].uri, "PNG")  # changed on disk: the cache still has the decoded pair
    assert torch.equal(data[0][1], first[1])
    with pytest.raises(PixelmillError, match=r"img0-mask.png is 61x45, its image .*img0.png 3x3"):
        SegmentationDataset(records, CAMVID, crop=16, train=True, cache_mb=0)[0]


def test_a_label_outside_the_map_names_the_mask(tmp_path):
    indices = np.full((6, 6), 2, np.uint8)
    indices[3, 4] = 40
    folder = tmp_path / "bad"
    folder.mkdir()
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(indices, "L").save(folder / "a-mask.png")
    record = SegRecord(str(folder / "a.png"), str(folder / "a-mask.png"), 6, 6)
    with pytest.raises(PixelmillError, match=r"a-mask.png: mask value 40 at \(x=4, y=3\).* 1 pixel"):
        SegmentationDataset([record], CAMVID, crop=4)[0]
    with pytest.raises(PixelmillError, match="a-mask.png: mask value 40"):
        pixel_counts([record], CAMVID)


def test_no_records_and_bad_settings_are_errors(records):
    with pytest.raises(PixelmillError, match="no images with masks"):
        SegmentationDataset([], CAMVID)
    with pytest.raises(ValueError, match="scale_range"):
        SegmentationDataset(records, CAMVID, scale_range=(2, 1))
    with pytest.raises(ValueError, match="color_jitter"):
        SegmentationDataset(records, CAMVID, color_jitter=(0.1, 0.1, 0.1))


# ------------------------------------------------------------------------------------------- class weights


def test_median_frequency_weights_by_hand(tmp_path):
    # 5 classes, 3 ignored, 4 never present. A: 0 0 / 0 1; B: 0 2 / 2 3
    cm = ClassMap(names=("a", "b", "c", "void", "e"), ignore_index=3)
    a = write_pair(tmp_path, "a", np.zeros((2, 2, 3), np.uint8), np.array([[0, 0], [0, 1]], np.uint8), cm)
    b = write_pair(tmp_path, "b", np.zeros((2, 2, 3), np.uint8), np.array([[0, 2], [2, 3]], np.uint8), cm)
    assert pixel_counts([a, b], cm).tolist() == [4, 1, 2, 0, 0]
    # freq: a 4 / (4 + 3), b 1 / 4, c 2 / 3 (ignored pixels count in no total); median 4/7
    weights = median_frequency_weights([a, b], cm)
    assert weights == pytest.approx([1.0, (4 / 7) / (1 / 4), (4 / 7) / (2 / 3), 0.0, 1.0])


def test_all_ignored_masks_have_no_weights(tmp_path):
    record = write_pair(tmp_path, "void", np.zeros((3, 3, 3), np.uint8), np.full((3, 3), 11, np.uint8))
    with pytest.raises(PixelmillError, match="no labelled pixel"):
        median_frequency_weights([record], CAMVID)
