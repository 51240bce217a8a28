"""Shipped recipes run on any image, byte-for-byte reproducibly; bad YAML recipes fail early and clearly."""

import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelmill.tasks.prep.degrade import Downscale, GaussianNoise, Jpeg
from pixelmill.tasks.prep.recipes import (
    MAX_DEPTH,
    MAX_STEPS,
    RECIPES,
    Recipe,
    RecipeError,
    apply_recipe,
    get_recipe,
    list_recipes,
    load_recipe,
    parse_recipe,
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
    "huge factor": ("steps:\n  - {op: downscale, factor: 1e300}\n", "steps.0.factor: Input should be less than"),
    "infinite factor": ("steps:\n  - {op: downscale, factor: .inf}\n", "steps.0.factor: Input should be a finite"),
    "nan probability": ("steps:\n  - {op: jpeg, p: .nan}\n", "steps.0.p: Input should be a finite number"),
    "nan in a range": ("steps:\n  - {op: blur, sigma: [.nan, 2]}\n", "steps.0.sigma.0: Input should be a finite"),
    "huge short side": ("steps:\n  - {op: downscale, short_side: 1000000}\n", "steps.0.short_side: Input should be"),
    "upscaling factor": ("steps:\n  - {op: blur}\n  - {op: downscale, factor: 0.5}\n",
                         "steps.1.factor: must be above 1"),
    "too many steps": ("steps:\n" + "  - {op: jpeg}\n" * (MAX_STEPS + 1), "steps: a recipe has at most 64 steps"),
    "too many nested steps": ("steps:\n  - op: one_of\n    options:\n" + "      - {op: jpeg}\n" * MAX_STEPS,
                              "steps.0.options: a recipe has at most 64 steps, nested ones included"),
    "too deep": ("steps:\n  - " + "{op: chain, steps: [" * (MAX_DEPTH + 1) + "{op: jpeg}" + "]}" * (MAX_DEPTH + 1),
                 "steps" + ".0.steps" * MAX_DEPTH + ".0: chain and one_of nest at most 8 deep"),
    "too many values": ("steps:\n  - {op: downscale, factor: 2, method: [" + "area, " * 10_000 + "]}\n",
                        "a recipe holds at most 10,000 values"),
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


# ---- limits ---------------------------------------------------------------------------------------------

def write(tmp_path, text: str) -> str:
    path = tmp_path / "limits.yaml"
    path.write_text(text)
    return str(path)


def nested_chain_yaml(levels: int, flow: bool) -> str:
    if flow:
        return "steps:\n  - " + "{op: chain, steps: [" * levels + "{op: jpeg}" + "]}" * levels + "\n"
    lines = ["steps:"]
    for level in range(levels):
        lines += [" " * (2 + 4 * level) + "- op: chain", " " * (4 + 4 * level) + "steps:"]
    return "\n".join([*lines, " " * (2 + 4 * levels) + "- op: jpeg"]) + "\n"


@pytest.mark.parametrize("flow", [True, False], ids=["flow", "block"])
def test_a_2000_deep_chain_gets_a_clear_error_not_a_recursion_error(tmp_path, flow):
    with pytest.raises(RecipeError, match=r"steps(\.0\.steps){8}\.0: chain and one_of nest at most 8 deep"):
        get_recipe(write(tmp_path, nested_chain_yaml(2000, flow)))


@pytest.mark.parametrize("flow", [True, False], ids=["flow", "block"])
def test_the_limits_themselves_are_allowed(tmp_path, flow):
    recipe = get_recipe(write(tmp_path, nested_chain_yaml(MAX_DEPTH, flow)))
    assert apply_recipe(recipe, make_image(), 0).params["steps"][0]["steps"][0]["op"] == "chain"
    recipe = get_recipe(write(tmp_path, "steps:\n" + "  - {op: grayscale}\n" * MAX_STEPS))
    assert len(recipe.steps) == MAX_STEPS


def test_a_million_steps_fail_at_once(tmp_path):
    path = write(tmp_path, "steps:\n" + "  - {op: jpeg, quality: 50}\n" * 1_000_000)
    with pytest.raises(RecipeError, match="steps: a recipe has at most 64 steps, nested ones included"):
        get_recipe(path)


def test_limits_hold_for_recipes_built_in_python():
    deep = {"op": "jpeg"}
    for _ in range(2000):  # no recursion needed to build it, and none to refuse it
        deep = {"op": "chain", "steps": [deep]}
    with pytest.raises(RecipeError, match="chain and one_of nest at most 8 deep"):
        parse_recipe({"name": "deep", "steps": [deep]})
    with pytest.raises(RecipeError, match="steps: a recipe has at most 64 steps"):
        parse_recipe({"name": "long", "steps": [{"op": "jpeg"}] * 10**6})
    with pytest.raises(ValueError, match="target: a recipe has at most 64 steps"):
        Recipe(name="models", target=(Downscale(factor=2),) * (MAX_STEPS + 1))


def test_yaml_aliases_cannot_multiply_a_recipe(tmp_path):
    bomb = "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}' if i else 'a'] * 10)}]\n" for i in range(6))
    with pytest.raises(RecipeError, match="a recipe holds at most 10,000 values"):
        get_recipe(write(tmp_path, bomb + "steps: []\n"))


def test_downscale_to_a_larger_short_side_keeps_the_size(tmp_path):
    # The case: a 4500x3000 "LR" came out of a 480x320 HR.
    recipe = get_recipe(write(tmp_path, "steps:\n  - {op: downscale, short_side: 3000}\n"))
    result = apply_recipe(recipe, make_image(480, 320), 0)
    assert result.hr.size == result.lr.size == (480, 320)
    result = apply_recipe(RECIPES["lesson7"], make_image(80, 60), 0)  # smaller than lesson 7's 96
    assert result.lr.size == (80, 60)


def test_new_fields_leave_existing_definitions_and_hashes_alone():
    sr2 = RECIPES["sr-x2"]
    assert "allow_upscale" not in json.dumps(sr2.model_dump(mode="json"))
    upscaling = sr2.model_copy(update={"steps": (Downscale(factor=2, method="bicubic", allow_upscale=True),)})
    assert upscaling.recipe_hash != sr2.recipe_hash
