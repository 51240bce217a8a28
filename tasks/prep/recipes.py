"""Named, reproducible degradation recipes: how a clean HR image becomes its LR training input.

A recipe is data: `target` ops shape the HR image (e.g. modcrop, so the LR is an exact fraction of
it), then `steps` degrade a copy of it into the LR image. `apply_recipe(recipe, img, seed)` runs
both with one `numpy.random.Generator(seed)` and encodes both images deterministically: the HR as
PNG, the LR as PNG, or (`lr_format="jpeg"`) as the very JPEG bytes of the recipe's last step, like
fastai's lesson 7 which saves the crappified image at the quality it drew. Same recipe, image and
seed: byte-identical outputs. `recipe_hash` names the definition, for seeds and output paths.

Recipes come from the registry (`RECIPES`, `get_recipe("sr-x4")`) or from a YAML file with the same
fields (`get_recipe("my-recipe.yaml")`), for example:

    name: blurry-jpeg
    description: mild blur, then JPEG
    steps:
      - {op: blur, sigma: [0.5, 2.0], kernel_size: [7, 13]}
      - {op: jpeg, quality: [30, 70]}

A bad file fails before any work with a `RecipeError` naming each bad field (`steps.1.quality`). A recipe
has at most 64 steps (nested ones included) with chain and one_of at most 8 deep, checked on the YAML's
events before anything is built, so a huge or deeply nested file fails at once.
"""

import functools
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from yaml.events import CollectionEndEvent, MappingStartEvent, NodeEvent, ScalarEvent, SequenceStartEvent

from pixelmill.tasks.prep.degrade import (
    OP_NAMES,
    Blur,
    Degradation,
    Downscale,
    GaussianNoise,
    Grayscale,
    Jpeg,
    ModCrop,
    OneOf,
    Params,
    PoissonNoise,
    Watermark,
    apply_steps,
    check_steps,
)


class RecipeError(ValueError):
    """An unknown recipe name or an unusable recipe file; the message says which and what is valid."""


MAX_STEPS = 64  # steps in one recipe, nested ones included
MAX_DEPTH = 8  # chain and one_of inside one another
# A recipe within those limits has a few thousand values and is nested ~20 deep (root, step list, then
# a step and its list per level, a field, a range end); past these it is no recipe, and YAML's composer
# and pydantic would recurse and allocate for minutes before saying so.
_MAX_VALUES = 10_000
_MAX_NESTING = 2 * MAX_DEPTH + 4

Node = tuple[tuple[str | int, ...], str]  # (path, "map" | "list" | "value")


def _dotted(path: tuple) -> str:
    return ".".join(map(str, path)) or "<recipe>"


def _entries(path: tuple, items: Iterable[tuple[Any, Any]]) -> Iterator[tuple[tuple, Any]]:
    for key, value in items:
        yield (*path, key), value


def _data_nodes(data: Any) -> Iterator[Node]:
    """Every value of plain data (or pydantic models), parents first, in order, without recursion."""
    stack = [iter([((), data)])]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        path, value = item
        if isinstance(value, BaseModel):
            value = dict(value)
        if isinstance(value, dict):
            yield path, "map"
            stack.append(_entries(path, value.items()))
        elif isinstance(value, list | tuple):
            yield path, "list"
            stack.append(_entries(path, enumerate(value)))
        else:
            yield path, "value"


@dataclass
class _Open:
    path: tuple
    is_map: bool
    key: Any = None  # a mapping's key waiting for its value
    index: int = 0  # a list's next index


def _yaml_nodes(text: str) -> Iterator[Node]:
    """Every node of a YAML document, as `_data_nodes` gives them, read from parse events: nothing is built."""
    stack: list[_Open] = []
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, CollectionEndEvent):
            stack.pop()
            continue
        if not isinstance(event, NodeEvent):  # stream and document markers
            continue
        parent = stack[-1] if stack else None
        if parent and parent.is_map and parent.key is None and isinstance(event, ScalarEvent):
            parent.key = event.value
            continue
        if parent is None:
            path = ()
        elif parent.is_map and parent.key is None:  # a key that is a collection: `?`, and so is its value
            path, parent.key = (*parent.path, "?"), "?"
        elif parent.is_map:
            path, parent.key = (*parent.path, parent.key), None
        else:
            path, parent.index = (*parent.path, parent.index), parent.index + 1
        if isinstance(event, MappingStartEvent | SequenceStartEvent):
            yield path, "map" if isinstance(event, MappingStartEvent) else "list"
            stack.append(_Open(path, isinstance(event, MappingStartEvent)))
        else:
            yield path, "value"


def check_size(nodes: Iterable[Node]) -> None:
    """Refuse a recipe with too many steps or values or nested too deep, at the first node past a limit.

    A step is a mapping in a list (`steps.3`, `steps.0.options.1`); each list index above it but its own
    is a chain or one_of around it.
    """
    steps = 0
    for count, (path, kind) in enumerate(nodes, start=1):
        where = _dotted(path)
        if kind == "map" and path and isinstance(path[-1], int):
            steps += 1
            if steps > MAX_STEPS:
                raise ValueError(f"{_dotted(path[:-1])}: a recipe has at most {MAX_STEPS} steps, nested ones included")
            if sum(isinstance(part, int) for part in path) - 1 > MAX_DEPTH:
                raise ValueError(f"{where}: chain and one_of nest at most {MAX_DEPTH} deep")
        if len(path) > _MAX_NESTING:
            raise ValueError(f"{where}: nested too deeply for a recipe")
        if count > _MAX_VALUES:
            raise ValueError(f"{where}: a recipe holds at most {_MAX_VALUES:,} values")


class Recipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # goes into output paths
    description: str = ""
    version: int = Field(1, ge=1)
    target: tuple[Degradation, ...] = ()
    steps: tuple[Degradation, ...] = ()
    lr_format: Literal["png", "jpeg"] = "png"

    @model_validator(mode="before")
    @classmethod
    def _check_size(cls, data: Any) -> Any:
        check_size(_data_nodes(data))  # before a single step is built
        return data

    @model_validator(mode="after")
    def _check(self):
        check_steps(self.target, field="target")
        check_steps(self.steps, field="steps")
        if self.lr_format == "jpeg" and not (self.steps and isinstance(self.steps[-1], Jpeg)
                                             and self.steps[-1].p == 1.0):
            raise ValueError("lr_format 'jpeg' needs a last step `jpeg` with p=1 (its bytes are the LR file)")
        return self

    @property
    def recipe_hash(self) -> str:
        """First 16 hex chars of the sha256 of the canonical JSON definition (description excluded)."""
        return _recipe_hash(self)


@functools.lru_cache(maxsize=256)
def _recipe_hash(recipe: Recipe) -> str:
    # Asked several times per image: cache it (frozen recipes are hashable).
    definition = recipe.model_dump(mode="json", exclude={"description"})
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RecipeResult:
    hr: Image.Image
    lr: Image.Image
    params: Params  # recipe name, version, hash, seed and every step's drawn parameters
    hr_bytes: bytes | None  # PNG; None when the caller asked to encode the HR image itself
    lr_bytes: bytes  # PNG or JPEG, per `recipe.lr_format`


def encode_png(img: Image.Image) -> bytes:
    """PNG with fixed settings and no metadata chunks: the same pixels always give the same bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def apply_recipe(recipe: Recipe, img: Image.Image, seed: int, encode_hr: bool = True) -> RecipeResult:
    """Make the (HR, LR) pair for one 8-bit RGB or L image; `seed` usually comes from `derive_seed`.

    encode_hr=False skips the HR PNG encoding, for callers that can reuse the source file's bytes.
    """
    if img.mode not in ("RGB", "L"):
        raise ValueError(f"apply_recipe needs an 8-bit RGB or L image, got mode {img.mode!r}")
    rng = np.random.default_rng(seed)
    hr, target_params = apply_steps(recipe.target, img, rng)
    ctx: dict[str, Any] = {}
    lr, step_params = apply_steps(recipe.steps, hr, rng, ctx)
    lr_bytes = ctx["jpeg_bytes"] if recipe.lr_format == "jpeg" else encode_png(lr)
    params = {"recipe": recipe.name, "version": recipe.version, "recipe_hash": recipe.recipe_hash,
              "seed": seed, "target": target_params, "steps": step_params}
    return RecipeResult(hr=hr, lr=lr, params=params, hr_bytes=encode_png(hr) if encode_hr else None,
                        lr_bytes=lr_bytes)


# ---- shipped recipes -------------------------------------------------------------------------------

def _real_esrgan_stage(blur_sigma: float, noise_sigma: float, poisson_scale: float, blur_p: float) -> tuple:
    # One order of Real-ESRGAN's degradation (Wang et al. 2021, their default ranges), with a fixed x2
    # resize so two stages give exactly x4 on a modcrop-4 target.
    return (
        Blur(p=blur_p, kind=("isotropic", "anisotropic"), sigma=(0.2, blur_sigma), sigma_x=(0.2, blur_sigma),
             sigma_y=(0.2, blur_sigma), kernel_size=(7, 21)),
        Downscale(factor=2, method=("bicubic", "bilinear", "area")),
        OneOf(options=(GaussianNoise(sigma=(1, noise_sigma), gray_prob=0.4),
                       PoissonNoise(scale=(0.05, poisson_scale), gray_prob=0.4))),
        Jpeg(quality=(30, 95)),
    )


def _sr(scale: int) -> Recipe:
    return Recipe(name=f"sr-x{scale}", description=f"x{scale} bicubic downscale (SR benchmark convention)",
                  target=(ModCrop(scale=scale),), steps=(Downscale(factor=scale, method="bicubic"),))


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        name="lesson7",
        description="fastai lesson 7 crappify: short side 96, JPEG quality 10-70 written on the image",
        steps=(
            Downscale(short_side=96, method="bilinear"),
            Watermark(text="quality", size=(11, 11), opacity=(1, 1), color="white", position="top_left"),
            Jpeg(quality=(10, 70)),
        ),
        lr_format="jpeg",
    ),
    _sr(2),
    _sr(4),
    Recipe(name="dejpeg", description="JPEG artifacts, quality 10-50, same size",
           steps=(Jpeg(quality=(10, 50)),)),
    Recipe(
        name="watermark",
        description="random text, 20-60 px, opacity 0.3-0.9, random colour, same size",
        steps=(Watermark(text="random", size=(20, 60), opacity=(0.3, 0.9), color="random"),),
    ),
    Recipe(
        name="denoise",
        description="Gaussian noise (sigma 5-50) or Poisson noise, same size",
        steps=(OneOf(options=(GaussianNoise(sigma=(5, 50)), PoissonNoise(scale=(0.5, 3.0)))),),
    ),
    Recipe(name="colorize", description="grayscale input (3 equal channels), colour target",
           steps=(Grayscale(keep_channels=True),)),
    Recipe(
        name="realistic",
        description="Real-ESRGAN second-order degradation, x4: (blur, resize, noise, JPEG) twice",
        target=(ModCrop(scale=4),),
        steps=(_real_esrgan_stage(3.0, 30, 3.0, blur_p=1.0) + _real_esrgan_stage(1.5, 25, 2.5, blur_p=0.8)),
    ),
)}


def list_recipes() -> list[Recipe]:
    return list(RECIPES.values())


def _field_path(loc: tuple) -> str:
    # pydantic puts the union tag in the path (steps.1.jpeg.quality); users wrote steps.1.quality.
    parts = [str(part) for i, part in enumerate(loc)
             if not (i > 0 and isinstance(loc[i - 1], int) and part in OP_NAMES)]
    return ".".join(parts)


def _describe(error: dict) -> str:
    path = _field_path(error["loc"])
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return f"  {path}.op: unknown or missing op; valid ops: {', '.join(OP_NAMES)}"
    message = error["msg"].removeprefix("Value error, ")
    return f"  {path}: {message}" if path else f"  {message}"  # whole-recipe checks name their fields


def parse_recipe(data: Any, source: str = "<recipe>") -> Recipe:
    """Validate a recipe definition (a dict, as loaded from YAML); RecipeError names every bad field."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of fields, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = "\n".join(_describe(e) for e in exc.errors())
        raise RecipeError(f"{source}: invalid recipe\n{lines}") from None


def load_recipe(path: str | Path) -> Recipe:
    """Read a YAML recipe file; the recipe's `name` defaults to the file name without extension."""
    path = Path(path)
    try:
        text = path.read_text()
        check_size(_yaml_nodes(text))  # YAML's composer recurses: a deep file must not reach it
        data = yaml.safe_load(text)
    except OSError as exc:
        raise RecipeError(f"cannot read recipe file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from None
    except ValueError as exc:
        raise RecipeError(f"{path}: invalid recipe\n  {exc}") from None
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return parse_recipe(data, source=str(path))


def get_recipe(name_or_path: str) -> Recipe:
    """A shipped recipe by name, or a recipe read from a YAML file path."""
    if name_or_path in RECIPES:
        return RECIPES[name_or_path]
    if Path(name_or_path).suffix in (".yaml", ".yml") or Path(name_or_path).is_file():
        return load_recipe(name_or_path)
    raise RecipeError(f"unknown recipe {name_or_path!r}; valid names: {', '.join(RECIPES)} "
                      "(or the path of a .yaml recipe file)")
