"""Shipped recipes run on any image, byte-for-byte reproducibly; bad YAML recipes fail early and clearly."""

import io

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelmill.tasks.prep.degrade import GaussianNoise, Jpeg
from pixelmill.tasks.prep.recipes import (
    RECIPES,
    Recipe,
    RecipeError,
    apply_recipe,
    get_recipe,
    list_recipes,
    load_recipe,
)
from tests.helpers import make_image

# Recipes whose LR is a pure function of the image: the seed must not matter.
DETERMINISTIC = {"sr-x2", "sr-x4", "colorize"}
SAME_SIZE = {"dejpeg", "watermark", "denoise", "colorize"}
SCALE = {"sr-x2": 2, "sr-x4": 4, "realistic": 4}





def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_registry_holds_the_shipped_recipes():
    assert set(RECIPES) == {"lesson7", "sr-x2", "sr-x4", "dejpeg", "watermark", "denoise", "colorize",
                            "realistic"}
    assert [r.name for r in list_recipes()] == list(RECIPES)
    assert all(r.description for r in list_recipes())
    assert len({r.recipe_hash for r in list_recipes()}) == len(RECIPES)


@pytest.mark.parametrize(("size", "mode"), [((200, 150), "RGB"), ((201, 149), "RGB"), ((200, 150), "L")])
@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_runs_and_its_files_hold_its_images(name, size, mode):
    img = make_image(*size, mode=mode)
    result = apply_recipe(RECIPES[name], img, seed=3)
    hr, lr = result.hr, result.lr
    assert hr.mode == mode and lr.mode == mode
    if name in SCALE:
        s = SCALE[name]
        assert hr.size == (size[0] - size[0] % s, size[1] - size[1] % s)
        assert lr.size == (hr.size[0] // s, hr.size[1] // s)
        assert (lr.size[0] * s, lr.size[1] * s) == hr.size
    elif name == "lesson7":
        assert hr.size == size and min(lr.size) == 96
    else:
        assert name in SAME_SIZE and hr.size == lr.size == size
    # The stored files decode to exactly the images returned.
    assert decode(result.hr_bytes).format == "PNG" and decode(result.hr_bytes).tobytes() == hr.tobytes()
    stored_lr = decode(result.lr_bytes)
    assert stored_lr.format == ("JPEG" if RECIPES[name].lr_format == "jpeg" else "PNG")
    assert stored_lr.mode == mode and stored_lr.tobytes() == lr.tobytes()
    assert result.params["recipe"] == name and result.params["recipe_hash"] == RECIPES[name].recipe_hash
    assert result.params["seed"] == 3 and len(result.params["steps"]) == len(RECIPES[name].steps)


@pytest.mark.parametrize("name", list(RECIPES))
def test_same_seed_gives_byte_identical_files(name):
    img = make_image(201, 149)
    first, second = apply_recipe(RECIPES[name], img, 11), apply_recipe(RECIPES[name], img.copy(), 11)
    assert first.lr_bytes == second.lr_bytes and first.hr_bytes == second.hr_bytes
    assert first.params == second.params


@pytest.mark.parametrize("name", sorted(set(RECIPES) - DETERMINISTIC))
def test_different_seeds_give_different_inputs(name):
    img = make_image()
    assert len({apply_recipe(RECIPES[name], img, seed).lr_bytes for seed in range(4)}) > 1


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_seed_free_recipes_ignore_the_seed(name):
    img = make_image()
    assert apply_recipe(RECIPES[name], img, 1).lr_bytes == apply_recipe(RECIPES[name], img, 2).lr_bytes


def test_lesson7_writes_the_quality_it_saves_at():
    for seed in range(5):
        result = apply_recipe(RECIPES["lesson7"], make_image(), seed)
        _, mark, jpeg = result.params["steps"]
        assert 10 <= jpeg["quality"] <= 70 and mark["text"] == str(jpeg["quality"])
        assert mark["x"] <= result.lr.width // 2 and mark["y"] <= result.lr.height // 2  # top-left quarter
        assert result.lr_bytes[:2] == b"\xff\xd8"  # the LR file is the JPEG itself, not a PNG of it


def test_colorize_input_is_gray_and_target_is_colour():
    result = apply_recipe(RECIPES["colorize"], make_image(), 0)
    lr, hr = np.asarray(result.lr), np.asarray(result.hr)
    assert (lr[..., 0] == lr[..., 1]).all() and (lr[..., 1] == lr[..., 2]).all()
    assert (hr[..., 0] != hr[..., 1]).any()


def test_apply_recipe_refuses_modes_it_cannot_promise_results_for():
    with pytest.raises(ValueError, match="RGB or L"):
        apply_recipe(RECIPES["dejpeg"], Image.new("RGBA", (32, 32)), 0)


# ---- recipe identity -----------------------------------------------------------------------------------

def test_recipe_hash_names_the_definition_not_the_object_or_the_wording():
    recipe = RECIPES["dejpeg"]
    h = recipe.recipe_hash
    assert len(h) == 16 and int(h, 16) >= 0
    assert Recipe.model_validate(recipe.model_dump()).recipe_hash == h
    assert recipe.model_copy(update={"description": "reworded"}).recipe_hash == h
    assert recipe.model_copy(update={"steps": (Jpeg(quality=(10, 51)),)}).recipe_hash != h
    assert recipe.model_copy(update={"version": 2}).recipe_hash != h


# ---- get_recipe and YAML files -------------------------------------------------------------------------

def test_get_recipe_by_name():
    assert get_recipe("sr-x4") is RECIPES["sr-x4"]


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(RecipeError, match="unknown recipe 'sr-x3'.*sr-x2.*realistic") as info:
        get_recipe("sr-x3")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_shipped_recipe_round_trips_through_yaml(name, tmp_path):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(RECIPES[name].model_dump(mode="json"), sort_keys=False))
    loaded = get_recipe(str(path))
    assert loaded == RECIPES[name] and loaded.recipe_hash == RECIPES[name].recipe_hash


def test_hand_written_yaml_recipe(tmp_path):
    path = tmp_path / "noisy-jpeg.yml"
    path.write_text(
        "description: noise, then JPEG\n"
        "steps:\n"
        "  - {op: gaussian_noise, sigma: [2, 8], p: 0.5}\n"
        "  - op: jpeg\n"
        "    quality: 40\n"
    )
    recipe = get_recipe(str(path))
    assert recipe.name == "noisy-jpeg"  # taken from the file name
    assert recipe.steps == (GaussianNoise(sigma=(2, 8), p=0.5), Jpeg(quality=(40, 40)))
    result = apply_recipe(recipe, make_image(), 5)
    assert result.params["steps"][1]["quality"] == 40


BAD_RECIPES = {
    "unknown op": ("steps:\n  - {op: jpeg}\n  - {op: sharpen}\n", "steps.1.op"),
    "missing op": ("steps:\n  - {quality: 30}\n", "steps.0.op"),
    "unknown field": ("steps:\n  - {op: jpeg, qualty: 30}\n", "steps.0.qualty"),
    "wrong type": ("steps:\n  - {op: blur}\n  - {op: jpeg, quality: high}\n", "steps.1.quality"),
    "lo above hi": ("steps:\n  - {op: blur}\n  - {op: jpeg, quality: [60, 20]}\n", "steps.1.quality"),
    "out of bounds": ("steps:\n  - {op: jpeg, quality: [0, 50]}\n", "steps.0.quality"),
    "even kernel": ("steps:\n  - {op: blur, kernel_size: [4, 8]}\n", "steps.0.kernel_size"),
    "bad method": ("steps:\n  - {op: downscale, factor: 2, method: [cubic]}\n", "steps.0.method"),
    "nested": ("steps:\n  - op: chain\n    steps:\n      - {op: jpeg}\n      - {op: jpeg, p: 2}\n",
               "steps.0.steps.1.p"),
    "two sizes": ("steps:\n  - {op: downscale, factor: 2, short_side: 96}\n", "steps.0"),
    "recipe field": ("steps: []\nlr_format: webp\n", "lr_format"),
    "unknown recipe field": ("stepz: []\n", "stepz"),
    "quality text without jpeg": ("steps:\n  - {op: watermark, text: quality}\n", "steps.0"),
    "jpeg output without jpeg": ("lr_format: jpeg\nsteps:\n  - {op: blur}\n", "lr_format"),
    "not a mapping": ("- {op: jpeg}\n", "mapping"),
    "not yaml": ("steps: [\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", list(BAD_RECIPES))
def test_bad_yaml_recipes_fail_early_naming_the_field(case, tmp_path):
    text, expected = BAD_RECIPES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        get_recipe(str(path))
    message = str(info.value)
    assert expected in message and str(path) in message


def test_missing_recipe_file():
    with pytest.raises(RecipeError, match="cannot read recipe file"):
        load_recipe("/nonexistent/recipe.yaml")
    with pytest.raises(RecipeError, match="cannot read recipe file"):
        get_recipe("/nonexistent/recipe.yaml")
