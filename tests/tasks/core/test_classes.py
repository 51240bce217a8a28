"""Class maps: presets, YAML files with field-naming errors, masks in every encoding, and no silent wrong class."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pixelmill.tasks.core.classes import (
    CAMVID,
    PRESETS,
    ClassMap,
    colorize,
    load_class_map,
    mask_to_indices,
    overlay,
    to_palette_image,
    voc_palette,
)
from pixelmill.tasks.core.errors import ConfigError


@pytest.fixture
def indices():
    """(6, 8) indices using every CamVid value, Unlabelled (11) included."""
    return (np.arange(48).reshape(6, 8) % 12).astype(np.uint8)


def roundtrip(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


def test_camvid_preset_is_segnets_order_and_colours():
    cm = load_class_map("camvid")
    assert cm is CAMVID and cm.num_classes == 12 and cm.ignore_index == 11
    assert cm.names[0] == "Sky" and cm.names[3] == "Road" and cm.names[11] == "Unlabelled"
    assert cm.colors[3] == (128, 64, 128) and cm.colors[4] == (60, 40, 222) and cm.colors[11] == (0, 0, 0)
    assert cm.evaluated == list(range(11))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_its_colours(name):
    cm = PRESETS[name]
    idx = np.arange(cm.num_classes, dtype=np.uint8).reshape(1, -1)
    rgb = Image.fromarray(colorize(idx, cm))
    assert np.array_equal(mask_to_indices(rgb, cm), idx)


@pytest.mark.parametrize("mode", ["L", "P"])
def test_grey_and_palette_masks_hold_the_indices(indices, mode):
    im = Image.fromarray(indices, "L") if mode == "L" else to_palette_image(indices, CAMVID)
    im = roundtrip(im)
    assert im.mode == mode
    out = mask_to_indices(im, CAMVID)
    assert out.dtype == np.uint8 and np.array_equal(out, indices)


def test_palette_png_shows_the_class_colours(indices):
    im = roundtrip(to_palette_image(indices, CAMVID))
    assert np.array_equal(np.asarray(im.convert("RGB")), colorize(indices, CAMVID))


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_coded_masks_go_through_the_colour_table(indices, mode):
    im = Image.fromarray(colorize(indices, CAMVID)).convert(mode)
    assert np.array_equal(mask_to_indices(roundtrip(im), CAMVID), indices)


def test_sixteen_bit_and_binary_masks():
    values = np.array([[0, 1], [11, 3]], np.uint16)
    assert np.array_equal(mask_to_indices(Image.fromarray(values), CAMVID), values)
    binary = ClassMap(names=("background", "object"))
    im = Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1")
    assert np.array_equal(mask_to_indices(im, binary), [[0, 1]])


def test_a_value_outside_the_map_is_named_with_its_pixel_count(indices):
    bad = indices.copy()
    bad[2, 5] = 12
    bad[4, 0:3] = 200
    with pytest.raises(ValueError, match=r"mask value 12 at \(x=5, y=2\) .*camvid.* 4 pixel\(s\) with values \[12, 200\]"):
        mask_to_indices(Image.fromarray(bad, "L"), CAMVID)
    with pytest.raises(ValueError, match="mask value 300"):
        mask_to_indices(Image.fromarray(np.array([[0, 300]], np.uint16)), CAMVID)


def test_an_unknown_colour_is_named_with_its_pixel_count(indices):
    rgb = colorize(indices, CAMVID)
    rgb[1, 2] = (1, 2, 3)
    rgb[3, 3] = (1, 2, 3)
    rgb[5, 7] = (255, 255, 255)
    with pytest.raises(ValueError, match=r"colour \(1, 2, 3\) at \(x=2, y=1\) .* 3 pixel\(s\) in 2 unknown colour"):
        mask_to_indices(Image.fromarray(rgb), CAMVID)


def test_ignore_value_past_the_classes_is_accepted_and_drawn_black():
    cm = ClassMap(names=("background", "cat", "dog"), ignore_index=255)
    values = np.array([[0, 1, 2, 255]], np.uint8)
    assert np.array_equal(mask_to_indices(Image.fromarray(values, "L"), cm), values)
    assert colorize(values, cm)[0, 3].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="mask value 3"):
        mask_to_indices(Image.fromarray(np.array([[3]], np.uint8), "L"), cm)


def test_default_colours_are_the_voc_palette():
    cm = ClassMap(names=("a", "b", "c"))
    assert cm.colors == ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    assert len(set(voc_palette(256))) == 256


def test_colorize_and_overlay():
    cm = ClassMap(names=("a", "b", "void"), colors=((255, 0, 0), (0, 0, 255), (0, 255, 0)), ignore_index=2)
    idx = np.array([[0, 1, 2]], np.uint8)
    image = np.full((1, 3, 3), 100, np.uint8)
    assert colorize(idx, cm).tolist() == [[[255, 0, 0], [0, 0, 255], [0, 255, 0]]]
    out = overlay(Image.fromarray(image), idx, cm, alpha=0.25)
    assert out.tolist() == [[[139, 75, 75], [75, 75, 139], [100, 100, 100]]]  # the void pixel keeps the image
    with pytest.raises(ValueError, match="value 7"):
        colorize(np.array([[7]]), cm)
    with pytest.raises(ValueError, match="do not match"):
        overlay(image, np.zeros((2, 2), np.uint8), cm)


def test_yaml_class_map(tmp_path):
    path = tmp_path / "pets.yaml"
    path.write_text("names: [background, cat, dog]\ncolors: [[0, 0, 0], [255, 128, 0], [0, 128, 255]]\n"
                    "ignore_index: 255\n")
    cm = load_class_map(str(path))
    assert cm.name == "pets" and cm.names == ("background", "cat", "dog") and cm.colors[1] == (255, 128, 0)
    assert cm.ignore_index == 255 and cm.num_classes == 3 and cm.evaluated == [0, 1, 2]


@pytest.mark.parametrize(("text", "message"), [
    ("names: [a, b]\ncolors: [[0, 0, 0]]\n", "colors: 1 colours for 2 names"),
    ("names: [a, b]\ncolors: [[0, 0, 0], [0, 0, 300]]\n", "colors.1: [0, 0, 300] has a value outside 0-255"),
    ("names: [a, b]\ncolors: [[0, 0, 0], [0, 0, 0]]\n", "colors.1: (0, 0, 0) repeats colors.0"),
    ("names: [a, a]\n", "names.1: 'a' repeats names.0"),
    ("names: [a, b]\nignore_index: 256\n", "ignore_index: Input should be less than or equal to 255"),
    ("names: [a, b]\ncolours: [[0, 0, 0], [1, 1, 1]]\n", "colours: Extra inputs are not permitted"),
    ("names: []\n", "names: Tuple should have at least 1 item"),
    ("colors: [[0, 0, 0]]\n", "names: Field required"),
    ("- a\n- b\n", "a class map must be a mapping"),
    ("names: [a\n", "not valid YAML"),
])
def test_bad_yaml_names_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as e:
        load_class_map(path)
    assert message in str(e.value)


def test_unknown_name_or_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown class map 'cityscapes'.*camvid"):
        load_class_map("cityscapes")
    with pytest.raises(ConfigError, match="cannot read class map file"):
        load_class_map(tmp_path / "missing.yaml")


def test_class_map_is_frozen_and_hashable():
    with pytest.raises(Exception, match="frozen"):
        CAMVID.ignore_index = 3
    assert hash(CAMVID) == hash(CAMVID.model_copy())
