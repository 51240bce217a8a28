"""Segmentation through the flows and the CLI on a real Prefect server: ingest scenes with masks, train,
evaluate against the majority class, promote, segment one image."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pixelmill.flows.cli import app
from pixelmill.flows.evaluate import evaluate
from pixelmill.flows.ingest import ingest
from pixelmill.flows.train import train
from pixelmill.tasks.core import registry
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.classes import SCENES, mask_to_indices
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.prep.ingest import IngestConfig
from pixelmill.tasks.prep.scenes import write_synthetic_scenes
from pixelmill.tasks.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("prefect_server")
runner = CliRunner()
SMALL = {"task": "segmentation", "classes": "scenes", "arch": "unet-plain", "arch_kwargs": {"base": 8, "depth": 2},
         "batch_size": 4, "crop": 48, "val_crop": None, "loader_workers": 0, "lr": 3e-3}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, prefect_server):
    root = tmp_path_factory.mktemp("segflow")
    files = write_synthetic_scenes(str(root / "bucket"), 20, size=(64, 48))
    ws = str(root / "ws")
    ingest(files.images, dataset="scenes", workspace=ws,
           config=IngestConfig(masks=files.masks, split_fractions=(0.7, 0.3, 0.0)))
    return ws, files


@pytest.mark.slow  # measured 100 s on 2 shared, loaded cores
def test_train_beats_majority_class_evaluate_promote_segment(scenes, tmp_path):
    ws, files = scenes
    trained = train("scenes", "seg", TrainConfig(**SMALL, steps=120, val_every=60), workspace=ws)
    assert trained["model"] == "seg:v1" and trained["task"] == "segmentation" and trained["num_classes"] == 7
    last = trained["metrics"]
    assert last["val_miou"] > last["val_baseline_miou"] and last["val_global_acc"] > last["val_baseline_global_acc"]

    result = evaluate("seg", "scenes", split="valid", promote="production", workspace=ws)
    assert result["score_key"] == "miou" and result["baseline"] == "majority class"
    assert result["model_scores"]["miou"] > result["baseline_scores"]["miou"]
    assert result["promoted"] is True and registry.resolve(ws, "seg@production").version == "v1"
    rows = Catalog(ws).read("evaluations", "seg").to_pylist()
    per_image = [r for r in rows if r["scope"] == "image" and r["method"] == "model"]
    per_class = [r for r in rows if r["scope"] == "class" and r["method"] == "model"]
    assert len(per_image) == result["images"] and all(0 <= r["miou"] <= 1 for r in per_image)
    assert {r["source"] for r in rows} == {"images:scenes"}  # what it was scored on, typed
    assert all(r["item_id"].endswith(".png") for r in per_image)  # segmentation scores images: their URIs
    assert {r["class_name"] for r in per_class} == set(SCENES.names) - {SCENES.names[SCENES.ignore_index]}

    out = str(tmp_path / "mask.png")
    src = f"{files.images}/{files.names[0]}".removeprefix("file://")
    cli = runner.invoke(app, ["segment", "seg@production", src, out, "--overlay", "--workspace", ws])
    assert cli.exit_code == 0, cli.output
    mask, image = Image.open(out), Image.open(src)
    assert mask.mode == "P" and mask.size == image.size
    indices = mask_to_indices(mask, SCENES)
    assert indices.max() < len(SCENES.names) and len(np.unique(indices)) >= 2
    assert Image.open(str(tmp_path / "mask.overlay.png")).size == image.size

    cli = runner.invoke(app, ["evaluate", "seg", "--dataset", "scenes", "--workspace", ws])
    assert cli.exit_code == 0 and "miou" in cli.output and "majority class" in cli.output, cli.output


@pytest.mark.slow  # measured 10 s on 2 shared, loaded cores
def test_cli_train_segmentation_and_clear_errors(scenes):
    ws, _ = scenes
    result = runner.invoke(app, ["train", "segmentation", "--dataset", "scenes", "--classes", "scenes", "--name",
                                 "seg-cli", "--steps", "4", "--workspace", ws])
    assert result.exit_code == 0, result.output
    assert "val_miou" in result.output
    for args, message in [
        (["train", "segmentation", "--dataset", "nope", "--name", "x"], "unknown data set 'nope'"),
        (["train", "segmentation", "--dataset", "scenes", "--classes", "nosuch", "--name", "x"], "nosuch"),
        (["evaluate", "seg-cli"], "--data pairs:NAME (restoration, colorize) or --data images:NAME"),
        (["evaluate", "seg-cli", "--data", "pairs:scenes"], "seg-cli is a segmentation model: it scores on images:NAME"),
        (["segment", "seg-cli", "in.png", "out.jpg"], "a mask is written as PNG"),
    ]:
        result = runner.invoke(app, [*args, "--workspace", ws])
        assert result.exit_code == 1 and message in result.output and "hint:" in result.output, result.output


@pytest.mark.slow  # measured 7 s on 2 shared, loaded cores
def test_an_smp_encoder_trains_registers_and_segments(scenes, tmp_path):
    """A segmentation_models.pytorch arch goes through train, the registry and segment like the U-Nets
    (random encoder weights: no model hub is reachable here)."""
    ws, files = scenes
    config = SMALL | {"arch": "smp-unet-resnet34",
                      "arch_kwargs": {"decoder_channels": [32, 32, 16, 16, 8], "weights": "random"}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~50 BatchNorms a step on tiny tensors: on busy cores OpenMP barriers made it 8x slower
    try:
        trained = train("scenes", "seg-smp", TrainConfig(**config, steps=4, val_every=4), workspace=ws)
    finally:
        torch.set_num_threads(threads)
    assert trained["model"] == "seg-smp:v1" and "val_miou" in trained["metrics"]
    card = registry.resolve(ws, "seg-smp:v1")
    assert card.arch == "smp-unet-resnet34" and card.out_channels == len(SCENES.names)

    out = str(tmp_path / "mask.png")
    src = f"{files.images}/{files.names[0]}".removeprefix("file://")
    cli = runner.invoke(app, ["segment", "seg-smp:v1", src, out, "--workspace", ws])
    assert cli.exit_code == 0, cli.output
    mask = Image.open(out)
    assert mask.mode == "P" and mask.size == Image.open(src).size
    assert mask_to_indices(mask, SCENES).max() < len(SCENES.names)


def test_segmenting_with_a_restoration_config_is_refused(scenes):
    ws, _ = scenes
    with pytest.raises(PixelmillError, match="restoration loss"):
        train("scenes", "bad", TrainConfig(**(SMALL | {"loss": "l1"}), steps=2), workspace=ws)
