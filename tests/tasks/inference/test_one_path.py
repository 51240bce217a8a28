"""One inference path: the model card, the predictor per task, and `enhance`/`segment` giving apply's pixels.

Real images larger than one tile (so tiling is on), real tiny models in a real registry.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pixelmill.flows.cli import app
from pixelmill.models.checkpoint import save_model_bytes
from pixelmill.models.factory import build_model
from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.classes import ClassMap
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.core.model_tasks import MODEL_TASKS
from pixelmill.tasks.inference.apply import ApplyConfig, apply_local
from pixelmill.tasks.inference.predictors import PREDICTORS
from pixelmill.tasks.training.objectives import OBJECTIVES
from tests.helpers import make_image

torch.set_num_threads(1)
runner = CliRunner()
CLASSES = ClassMap(names=("sky", "road", "car"))
TILING = ["--tile", "64", "--overlap", "8"]  # a 150x110 input is 3x2 tiles


def register(workspace: str, task: str, name: str) -> ModelCard:
    torch.manual_seed(0)
    if task == "segmentation":
        model = build_model({"arch": "unet-plain", "out_channels": 3, "base": 8, "depth": 2})
        config = {"task": task, "scale": 1, "classes": CLASSES.model_dump(mode="json"), "majority_class": 1}
        metadata = {"dataset": "scenes"}
    else:
        in_channels, scale = (1, 1) if task == "colorize" else (3, 2)
        model = build_model({"arch": "unet-plain", "in_channels": in_channels, "out_channels": 3, "scale": scale,
                             "base": 8, "depth": 2, "residual": True})
        config = {"task": task, "scale": scale, "in_channels": in_channels}
        metadata = {"pairs_set": "photos-x2", "recipe_hash": "abc", "steps": 7, "metrics": {"val_psnr_y": 30.5}}
    return registry.save(workspace, name, model, config, metadata)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> str:
    ws = str(tmp_path_factory.mktemp("one-path") / "ws")
    for task in MODEL_TASKS:
        register(ws, task, task)
    return ws


def rgba_image(path: Path) -> None:
    """150x110 with an alpha ramp: transparency that must come back, resized, on a x2 output."""
    img = make_image(150, 110, seed=3).convert("RGBA")
    img.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 150, dtype=np.uint8), (110, 1))))
    img.save(path)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.mark.parametrize(("task", "command", "extra"), [
    ("restoration", "enhance", []), ("colorize", "enhance", []), ("segmentation", "segment", ["--overlay"])])
def test_one_file_gives_the_pixels_apply_gives(workspace, tmp_path, task, command, extra):
    src = tmp_path / "in"
    src.mkdir()
    if task == "restoration":
        rgba_image(src / "photo.png")
    else:
        make_image(150, 110, seed=4).save(src / "photo.png")
    apply_local(workspace, task, str(src), str(tmp_path / "out"),
                ApplyConfig(tile=64, overlap=8, overlay=bool(extra)))
    [row] = Catalog(workspace).read("predictions", task).to_pylist()
    assert row["status"] == "ok" and row["tiles"] == 6, row

    out = tmp_path / "one.png"
    result = runner.invoke(app, [command, task, str(src / "photo.png"), str(out), *TILING, *extra,
                                 "--workspace", workspace])
    assert result.exit_code == 0, result.output
    applied, one = pixels(row["output_uri"].removeprefix("file://")), pixels(out)
    assert applied.shape == one.shape and np.array_equal(applied, one)
    if task == "restoration":
        assert one.shape == (220, 300, 4), "x2, alpha kept"
        assert one[:, :20, 3].max() < 40 and one[:, -20:, 3].min() > 215  # the ramp, resized
    if task == "colorize":
        assert one.shape == (110, 150, 3)
    if task == "segmentation":
        assert one.shape == (110, 150) and one.max() < 3
        overlay = pixels(row["overlay_uri"].removeprefix("file://"))
        assert np.array_equal(overlay, pixels(tmp_path / "one.overlay.png"))


def test_tta_is_one_path_too_and_changes_what_a_model_answers(workspace, tmp_path):
    """--tta: `segment` and `apply` give the same self-ensembled mask, not the plain one (a random net is not
    symmetric under flips and turns)."""
    torch.manual_seed(1)
    model = build_model({"arch": "unet-plain", "out_channels": 3, "base": 8, "depth": 2})
    with torch.no_grad():  # weights far from their init: a mask with every class, shaped by the image
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    registry.save(workspace, "seg-tta", model, {"task": "segmentation", "scale": 1, "majority_class": 1,
                                                "classes": CLASSES.model_dump(mode="json")}, {"dataset": "scenes"})
    src = tmp_path / "in"
    src.mkdir()
    make_image(150, 110, seed=4).save(src / "photo.png")
    apply_local(workspace, "seg-tta", str(src), str(tmp_path / "out"), ApplyConfig(tile=64, overlap=8, tta=True))
    [row] = Catalog(workspace).read("predictions", "seg-tta").to_pylist()
    masks = {}
    for flag in ("--tta", "--no-tta"):
        out = tmp_path / f"one{flag}.png"
        result = runner.invoke(app, ["segment", "seg-tta", str(src / "photo.png"), str(out), *TILING, flag,
                                     "--workspace", workspace])
        assert result.exit_code == 0, result.output
        masks[flag] = pixels(out)
    assert np.array_equal(pixels(row["output_uri"].removeprefix("file://")), masks["--tta"])
    assert len(np.unique(masks["--no-tta"])) > 1 and not np.array_equal(masks["--tta"], masks["--no-tta"])


def test_a_model_given_to_the_other_command_is_a_clear_error(workspace, tmp_path):
    src = tmp_path / "in.png"
    make_image(40, 30).save(src)
    for command, model, says, hint in [("enhance", "segmentation", "is a segmentation model", "pixelmill segment"),
                                       ("segment", "restoration", "is a restoration model", "pixelmill enhance")]:
        out = tmp_path / f"{command}.png"
        result = runner.invoke(app, [command, model, str(src), str(out), "--workspace", workspace])
        assert result.exit_code == 1 and says in result.output and hint in result.output, result.output
        assert not out.exists()


def test_every_model_task_has_an_objective_and_a_predictor():
    assert set(PREDICTORS) == set(OBJECTIVES) == set(MODEL_TASKS)
    for name, task in MODEL_TASKS.items():
        assert task.objective.startswith("pixelmill.tasks.training.") and OBJECTIVES[name].name == name
        assert task.predictor.startswith("pixelmill.tasks.inference.")
        assert task.data in ("pairs", "images") and task.command in ("enhance", "segment")


def test_the_card_round_trips_through_the_version_folder(workspace):
    card = registry.resolve(workspace, "restoration")
    assert card.ref == "restoration:v1" and card.task == "restoration" and card.arch == "unet-plain"
    assert (card.scale, card.in_channels, card.out_channels, card.classes) == (2, 3, 3, None)
    assert card.source == "pairs:photos-x2" and card.recipe_hash == "abc" and card.steps == 7
    assert card.metrics == {"val_psnr_y": 30.5} and len(card.weights_sha256) == 64 and card.code_version
    assert card.arch_kwargs["base"] == 8 and card.created_at is not None
    assert ModelCard.from_files(card.uri, card.config_json(), card.metadata_json()) == card
    assert pickle.loads(pickle.dumps(card)) == card
    seg = registry.resolve(workspace, "segmentation")
    assert seg.classes == CLASSES and seg.out_channels == 3 and seg.source == "images:scenes"
    assert seg.majority_class == 1
    assert ModelCard.from_files(seg.uri, seg.config_json(), seg.metadata_json()) == seg
    assert registry.resolve(workspace, seg.uri) == seg  # by URL: the same card
    assert isinstance(registry.load_weights(card), torch.nn.Module)


def test_weights_that_do_not_match_the_digest_are_refused(tmp_path):
    ws = str(tmp_path / "ws")
    card = register(ws, "restoration", "sr")
    other = build_model({"arch": "unet-plain", "scale": 2, "base": 8, "depth": 2, "residual": True})
    storage.write_bytes(storage.join(card.uri, "weights.safetensors"), save_model_bytes(other)[0])
    with pytest.raises(PixelmillError, match="do not match the sha256"):
        registry.load_weights(card)


def write_old_version(folder: Path, model_config: dict, config: dict, metadata: dict) -> None:
    """A version folder as pixelmill wrote it before model cards: no out_channels, source or weights digest."""
    folder.mkdir(parents=True)
    torch.manual_seed(1)
    weights, saved = save_model_bytes(build_model(model_config))
    (folder / "weights.safetensors").write_bytes(weights)
    (folder / "config.json").write_text(json.dumps({**config, "model": saved}))
    (folder / "metadata.json").write_text(json.dumps(metadata))


def test_an_old_registry_still_loads_and_applies(tmp_path):
    ws = tmp_path / "ws"
    sr = {"arch": "unet-plain", "in_channels": 3, "out_channels": 3, "scale": 2, "base": 8, "depth": 2,
          "residual": True}
    write_old_version(ws / "models" / "old" / "v1", sr,
                      {"task": "restoration", "scale": 2, "input_range": [0, 1], "in_channels": 3,
                       "train_config": {"steps": 10}},
                      {"pairs_set": "photos-sr-x2", "recipe_hash": "r1", "train_pairs": 4, "valid_pairs": 1,
                       "steps": 10, "seconds": 1.5, "metrics": {"step": 10, "val_psnr_y": 29.0}, "name": "old",
                       "version": "v1", "code_version": "abc1234", "created_at": "2026-01-02T03:04:05+00:00"})
    seg = {"arch": "unet-plain", "in_channels": 3, "out_channels": 3, "scale": 1, "base": 8, "depth": 2,
           "residual": False}
    write_old_version(ws / "models" / "oldseg" / "v1", seg,
                      {"task": "segmentation", "scale": 1, "in_channels": 3, "input_range": [0, 1], "num_classes": 3,
                       "classes": CLASSES.model_dump(mode="json"), "majority_class": 2},
                      {"dataset": "scenes", "train_images": 4, "steps": 5, "metrics": {}, "name": "oldseg",
                       "version": "v1", "code_version": "abc1234", "created_at": "2026-01-02T03:04:05+00:00"})
    card = registry.resolve(str(ws), "old")
    assert (card.task, card.arch, card.scale, card.in_channels, card.out_channels) == ("restoration", "unet-plain",
                                                                                      2, 3, 3)
    assert card.source == "pairs:photos-sr-x2" and card.weights_sha256 is None and card.steps == 10
    assert card.train_config == {"steps": 10} and card.created_at.year == 2026
    segcard = registry.resolve(str(ws), "oldseg")
    assert segcard.classes == CLASSES and segcard.majority_class == 2 and segcard.source == "images:scenes"
    make_image(80, 60).save(tmp_path / "in.png")
    (tmp_path / "src").mkdir()
    make_image(80, 60).save(tmp_path / "src" / "a.png")
    plan = apply_local(str(ws), "old", str(tmp_path / "src"), str(tmp_path / "out"), ApplyConfig(tile=64, overlap=8))
    assert plan.todo == 1 and plan.task == "restoration"
    [row] = Catalog(str(ws)).read("predictions", "old").to_pylist()
    assert row["status"] == "ok" and (row["output_width"], row["output_height"]) == (160, 120)
    result = runner.invoke(app, ["segment", "oldseg", str(tmp_path / "in.png"), str(tmp_path / "m.png"),
                                 "--workspace", str(ws)])
    assert result.exit_code == 0, result.output


def test_the_onednn_setting_comes_with_a_loaded_model_not_an_import(workspace):
    """Importing the pipeline (as every flow module's import graph might) leaves the process's oneDNN alone;
    loading a model for inference sets its cache size before any forward runs."""
    script = ("import os, sys\n"
              "from pixelmill.tasks import steps\n"
              "from pixelmill.tasks.inference import pipeline, runtime\n"
              "from pixelmill.tasks.core import registry\n"
              "assert 'ONEDNN_PRIMITIVE_CACHE_CAPACITY' not in os.environ\n"
              "runtime.load_model(registry.resolve(sys.argv[1], 'restoration'), 'cpu')\n"
              "assert os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'] == '64'\n")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    done = subprocess.run([sys.executable, "-c", script, workspace], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
