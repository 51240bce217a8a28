"""Galleries that show the effect: 1:1 PNG crops where model and baseline differ most, the LR input blown up with
nearest neighbour, each crop's Y-PSNR; a real model's evaluation rendered to the artifact's Markdown."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from pixelmill.models.factory import build_model
from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.images import GALLERY_CROP, busiest_window
from pixelmill.tasks.core.reports import evaluation_gallery, pair_gallery
from pixelmill.tasks.training.evaluate import gallery_crops
from pixelmill.tasks.training.runs import evaluate_registered
from tests.helpers import crappify_local, ingest_local, texture_png


def test_the_window_is_where_the_images_differ_most():
    a = np.zeros((150, 200, 3), np.uint8)
    b = a.copy()
    b[120:130, 40:50] = 200  # the only difference
    b[10:12, 150:152] = 90  # a smaller one, elsewhere
    top, left = busiest_window(a, b, 96)
    assert (top, left) == (130 - 96, 0)  # the first window, row by row, that holds the whole large patch
    assert busiest_window(a, a, 96) == (0, 0)
    assert busiest_window(a[:40, :50], b[:40, :50], 96) == (0, 0)  # smaller than the window: all of it


def test_crops_are_one_to_one_with_the_input_blown_up_by_nearest():
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 255, (60, 80, 3), np.uint8)
    target = rng.integers(0, 255, (120, 160, 3), np.uint8)
    base = target // 2
    pred = base.copy()
    pred[100:110, 140:150] = target[100:110, 140:150]  # the model differs from the baseline here only
    crops, captions = gallery_crops(lr, base, pred, target)
    assert [c.shape for c in crops] == [(GALLERY_CROP, GALLERY_CROP, 3)] * 4
    top, left = 110 - GALLERY_CROP, 150 - GALLERY_CROP  # the first window that holds the whole difference
    window = (slice(top, top + GALLERY_CROP), slice(left, left + GALLERY_CROP))
    assert np.array_equal(crops[3], target[window]) and np.array_equal(crops[2], pred[window])
    lr_crop = crops[0]
    assert np.array_equal(lr_crop[::2, ::2], lr[top // 2:top // 2 + 48, left // 2:left // 2 + 48])  # every LR pixel a 2x2 block
    assert np.array_equal(lr_crop[::2, ::2], lr_crop[1::2, 1::2])
    assert re.fullmatch(r"\d+\.\d\d dB", captions[0]) and captions[3] == ""
    assert float(captions[2].split()[0]) > float(captions[1].split()[0])  # the model's crop is closer to the target


def data_uris_pngs(markdown: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m))) for m in re.findall(r"data:image/png;base64,([^)]+)\)",
                                                                              markdown)]


def test_an_evaluation_gallery_holds_native_png_crops(tmp_path):
    src, ws = str(tmp_path / "src"), str(tmp_path / "ws")
    for i in range(4):
        storage.write_bytes(f"{src}/t{i}.png", texture_png(i, 160))
    ingest_local(src, ws, "tex", split_fractions=(1.0, 0.0, 0.0))
    crappify_local(ws, "tex", recipe="sr-x2")
    net = build_model({"arch": "unet-plain", "scale": 2, "base": 8, "depth": 2, "residual": True})
    registry.save(ws, "g", net, config={"task": "restoration", "scale": 2, "in_channels": 3}, metadata={})

    result = evaluate_registered(ws, "g", "tex-sr-x2", "train", gallery=2, record=False)
    markdown = evaluation_gallery(result)
    assert markdown.splitlines()[0] == "| input | baseline | model | target |"
    images = data_uris_pngs(markdown)
    assert len(images) == 8
    assert all(im.format == "PNG" and im.size == (GALLERY_CROP, GALLERY_CROP) for im in images)
    assert len(re.findall(r"\) \d+\.\d\d dB", markdown)) == 6  # input, baseline and model crops are scored
    # the target crop is the HR file's own pixels, at its own resolution
    target = np.asarray(images[3].convert("RGB"))
    # (sr-x2 keeps no HR copy: the target is the source, mod-cropped; the sources are 160 px, already even)
    hr_files = [np.asarray(Image.open(io.BytesIO(storage.read_bytes(u))).convert("RGB"))
                for u in storage.iter_files(src) for u in [u.uri]]
    assert any((target[None] == hr[None, y:y + GALLERY_CROP, x:x + GALLERY_CROP]).all()
               for hr in hr_files for y in range(hr.shape[0] - GALLERY_CROP + 1)
               for x in range(hr.shape[1] - GALLERY_CROP + 1))


def test_pair_gallery_crops_lr_and_hr_alike(tmp_path):
    hr = Image.fromarray(np.random.default_rng(1).integers(0, 255, (130, 170, 3), np.uint8))
    lr = hr.resize((85, 65), Image.Resampling.BICUBIC)
    buf_lr, buf_hr = io.BytesIO(), io.BytesIO()
    lr.save(buf_lr, "PNG")
    hr.save(buf_hr, "PNG")
    images = data_uris_pngs(pair_gallery([(buf_lr.getvalue(), buf_hr.getvalue())]))
    assert [im.size for im in images] == [(GALLERY_CROP, GALLERY_CROP)] * 2
