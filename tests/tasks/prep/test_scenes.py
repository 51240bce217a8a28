"""Synthetic scenes: real PNG pairs with exact masks in the `scenes` class map, reproducible to the byte,
with a majority class to beat, that ingest pairs and the segmentation data set reads."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.classes import SCENES, mask_to_indices
from pixelmill.tasks.prep.scenes import make_scene, write_synthetic_scenes
from pixelmill.tasks.training.segdata import SegmentationDataset, load_segmentation_records
from tests.helpers import ingest_local


def read(url: str) -> Image.Image:
    return Image.open(io.BytesIO(storage.read_bytes(url)))


def test_images_and_masks_agree_and_every_label_is_a_class(tmp_path):
    files = write_synthetic_scenes(str(tmp_path / "scenes"), 5, size=(64, 48), seed=3)
    assert files.names == tuple(f"scene-{i:04d}.png" for i in range(5))
    assert storage.list_names(files.images, ".png") == storage.list_names(files.masks, ".png") == list(files.names)
    for name in files.names:
        image, mask = read(storage.join(files.images, name)), read(storage.join(files.masks, name))
        assert image.mode == "RGB" and mask.mode == "P" and image.size == mask.size == (64, 48)
        indices = mask_to_indices(mask, SCENES)  # raises on a value outside the map
        assert indices.max() < SCENES.num_classes
        assert np.array_equal(np.asarray(mask.convert("RGB")), np.array(SCENES.colors, np.uint8)[indices])


def test_the_same_seed_gives_the_same_bytes(tmp_path, memory_url):
    a = write_synthetic_scenes(str(tmp_path / "a"), 3, seed=7)
    b = write_synthetic_scenes(memory_url, 3, seed=7)  # any storage
    c = write_synthetic_scenes(str(tmp_path / "c"), 3, seed=8)
    for name in a.names:
        for folder in ("images", "masks"):
            first = storage.read_bytes(storage.join(str(tmp_path / "a"), folder, name))
            assert storage.read_bytes(storage.join(memory_url, folder, name)) == first
            assert storage.read_bytes(storage.join(str(tmp_path / "c"), folder, name)) != first
    assert b.names == c.names


def test_scenes_have_a_majority_class_to_beat_and_every_class():
    masks = [make_scene(np.random.default_rng([0, i]), 128, 96)[1] for i in range(30)]
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=7)
    labelled = counts[:6] / counts[:6].sum()
    assert labelled.argmax() in (0, 1)  # sky or road
    assert 0.3 < labelled.max() < 0.5  # the majority baseline is far from perfect
    assert (counts > 0).all()  # every class, void included
    # scenes differ: the majority class's share varies from image to image
    shares = [np.bincount(m.ravel(), minlength=7)[:6].max() / m.size for m in masks]
    assert np.std(shares) > 0.02


def test_the_image_shows_the_mask():
    """Classes differ in colour where the mask says so: the mean colour of sky is bluer than road's."""
    image, mask = make_scene(np.random.default_rng(1), 128, 96)
    sky, road = image[mask == 0].astype(float).mean(0), image[mask == 1].astype(float).mean(0)
    assert sky[2] - sky[0] > 20 and abs(road[2] - road[0]) < 30


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 16x16"):
        write_synthetic_scenes("memory://x", 1, size=(8, 8))
    with pytest.raises(ValueError, match="n >= 1"):
        write_synthetic_scenes("memory://x", 0)


def test_ingest_pairs_them_and_the_segmentation_data_set_reads_them(tmp_path):
    files = write_synthetic_scenes(str(tmp_path / "scenes"), 4, size=(48, 32))
    catalog = ingest_local(files.images, str(tmp_path / "ws"), masks=files.masks)
    records, skipped = load_segmentation_records(catalog, "d", None)
    assert len(records) == 4 and skipped == 0
    assert all(r.mask_uri.endswith("/masks/" + r.uri.rsplit("/", 1)[1]) for r in records)
    x, y = SegmentationDataset(records, SCENES, crop=None, train=False)[0]
    assert x.shape == (3, 32, 48) and y.shape == (32, 48) and int(y.max()) < 7
