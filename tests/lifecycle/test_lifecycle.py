"""A model's whole life per model task (restoration, colorize, segmentation), on a local and on an S3 workspace,
through the documented CLI:

    ingest -> crappify (restoration: sr-x2, colorize: colorize) -> `train TASK` killed with SIGKILL right after its
    first checkpoint -> `train TASK --resume` to the end (weights bit-identical to an uninterrupted run of the same
    config) -> `evaluate --promote production` -> `apply NAME@production` over ordinary and odd inputs (16-bit grey,
    CMYK, palette with transparency, RGBA, EXIF-rotated), every output checked pixel by pixel against an independent
    decode + plain torch forward of the registered weights (at the input's depth; grey in, grey out for a
    restoration; transparent colours filled, alpha kept; tests/lifecycle/support.py), named like its input and
    carrying its provenance -> `enhance` / `segment` on one file gives the pixels apply wrote for it.

Every command runs in this process with typer's CliRunner against the session's Prefect server, except the
training that is killed: that one is a `pixelmill` process (tasks/core/faults.py kills it on cue).
"""

from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from pixelmill.flows.cli import app
from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.metadata import provenance_of
from pixelmill.tasks.prep.scenes import write_synthetic_scenes
from tests.lifecycle import support

runner = CliRunner()
TINY = {"arch": "unet-plain", "arch_kwargs": {"base": 8, "depth": 2}, "batch_size": 4, "loader_workers": 0,
        "lr": 3e-3, "device": "cpu", "seed": 0}


@dataclass(frozen=True)
class Task:
    name: str
    recipe: str | None  # crappify recipe; None: trains on the ingested data set with masks
    config: dict  # TrainConfig fields (the --config YAML)
    images: int = 10

    def train_args(self, source: str, model: str, config: Path, ws: str) -> list[str]:
        data = ["--dataset", source, "--classes", "scenes"] if self.recipe is None else ["--pairs", source]
        return ["train", self.name, *data, "--name", model, "--config", str(config), "--workspace", ws]

    def evaluate_args(self, source: str) -> list[str]:
        return ["--data", f"images:{source}" if self.recipe is None else f"pairs:{source}"]


TASKS = {
    "restoration": Task("restoration", "sr-x2", TINY | {"crop": 16, "val_crop": 24, "steps": 40, "val_every": 20,
                                                       "lr": 1e-2}),
    "colorize": Task("colorize", "colorize", TINY | {"crop": 24, "val_crop": 32, "steps": 40, "val_every": 20}),
    # at half size, segmentation's default (TINY's arch_kwargs merge over it)
    "segmentation": Task("segmentation", None, TINY | {"classes": "scenes", "crop": 48, "val_crop": None,
                                                       "steps": 60, "val_every": 30}, images=14),
}


@pytest.fixture
def api_url(prefect_server) -> str:
    """The session Prefect server's API, for the training process."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The same thread count in this process and in the killed training process: bit-identical float order.
    `apply` sets its own count; put ours back for whatever runs next. The CPU even where CUDA is present (train
    configs say `device: cpu`; apply, enhance and segment take `auto`): the pixel checks expect fp32."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        yield
    torch.set_num_threads(before)


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"`pixelmill {' '.join(args)}` failed:\n{result.output}"
    return result.output


def write_sources(task: Task, root: str) -> tuple[str, str | None]:
    """The training images (and masks) under `root`: (images URL, masks URL or None)."""
    if task.recipe is None:
        files = write_synthetic_scenes(storage.join(root, "scenes"), task.images, size=(64, 48))
        return files.images, files.masks
    make = support.BASES[task.name]
    for i in range(task.images):
        storage.write_bytes(storage.join(root, "src", f"img{i:02d}.png"), support.png(make(i, 64, 64)))
    return storage.join(root, "src"), None


def validated_steps(model: str) -> list[int]:
    """The steps at which the model's last train flow run validated (its loss table in the Prefect UI)."""
    from prefect.artifacts import Artifact

    from pixelmill.tasks.core.reports import artifact_key

    table = Artifact.get(artifact_key("train", model))
    assert table is not None, f"no training table for {model}"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    return [int(row["step"]) for row in rows]


def run_lifecycle(task: Task, root: str, tmp_path: Path, api_url: str) -> dict:
    """Every stage of one model task under `root` (a local folder or s3://bucket/prefix); seconds per stage, and
    the promoted model's gain over its baseline (printed: how much room the promotion had)."""
    times: dict = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[stage] = round(now - clock, 1)
        clock = now

    ws = storage.join(root, "ws")
    images, masks = write_sources(task, root)
    dataset = f"{task.name[:3]}-data"
    cli("ingest", images, "--dataset", dataset, "--workspace", ws, "--split-fractions", "0.7,0.3,0",
        *(["--masks", masks] if masks else []))
    source = dataset
    if task.recipe:
        cli("crappify", "--dataset", dataset, "--recipe", task.recipe, "--workspace", ws, "--workers", "1")
        source = f"{dataset}-{task.recipe}"
        assert Catalog(ws).read("pairs", source).num_rows == task.images
    lap("ingest+crappify")

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(task.config))
    model = f"{task.name[:3]}-{'s3' if root.startswith('s3://') else 'local'}-{uuid.uuid4().hex[:6]}"
    killed = support.train_killed_after_first_checkpoint(task.train_args(source, model, config, ws), api_url,
                                                         tmp_path / "killed-train.log")
    assert killed.returncode == -9, f"the training was not killed at its checkpoint:\n{killed.output[-3000:]}"
    checkpoint = Layout.of(ws).checkpoint(model)
    assert storage.exists(checkpoint), "killed after its first checkpoint, yet no checkpoint is stored"
    assert registry.versions(ws, model) == [], "a killed training registered a model"
    state = torch.load(io.BytesIO(storage.read_bytes(checkpoint)), map_location="cpu", weights_only=True)
    assert state["step"] == task.config["val_every"], "killed right after the first checkpoint"
    lap("train killed")

    out = cli(*task.train_args(source, model, config, ws), "--resume")
    steps = task.config["steps"]
    assert f"trained {model}:v1: {steps} steps" in out, out
    assert validated_steps(model) == [steps], "the resumed run started again from step 0"
    lap("train --resume")

    reference = f"{model}-uninterrupted"
    cli(*task.train_args(source, reference, config, ws))
    assert validated_steps(reference) == list(range(task.config["val_every"], steps + 1, task.config["val_every"]))
    lap("train uninterrupted")
    resumed_uri, reference_uri = (registry.resolve(ws, f"{m}:v1").uri for m in (model, reference))
    resumed, uninterrupted = support.load_weights(resumed_uri), support.load_weights(reference_uri)
    assert resumed.keys() == uninterrupted.keys()
    differ = [k for k in resumed if not torch.equal(resumed[k], uninterrupted[k])]
    assert not differ, f"resumed weights differ from an uninterrupted run's in {len(differ)} tensors: {differ[:5]}"

    out = cli("evaluate", model, *task.evaluate_args(source), "--promote", "production", "--workspace", ws)
    assert "promoted:" in out and "not promoted" not in out, out
    times["gain"] = next(line for line in out.splitlines() if "gain over the baseline" in line).split(":", 1)[1]
    assert registry.resolve(ws, f"{model}@production").version == "v1"
    lap("evaluate+promote")

    inputs = support.apply_inputs(task.name)
    for name, data in inputs.items():
        storage.write_bytes(storage.join(root, "incoming", name), data)
    output = storage.join(root, "outputs")
    out = cli("apply", f"{model}@production", "--input", storage.join(root, "incoming"), "--output", output,
              "--workspace", ws)
    assert f"{len(inputs)} processed, 0 skipped, 0 failed" in out, out
    rows = {r["input_uri"].rsplit("/", 1)[-1]: r for r in Catalog(ws).read("predictions", model).to_pylist()}
    assert set(rows) == set(inputs) and all(r["status"] == "ok" for r in rows.values()), rows
    lap("apply")

    assert rows[support.WIDE]["tiles"] >= 2, "the wide input was meant to go through in tiles"
    net = support.load_net(resumed_uri)
    outputs = {}
    for name, data in inputs.items():
        assert rows[name]["output_uri"].endswith("/" + name.rsplit(".", 1)[0] + ".png"), \
            f"{name}: the output's name does not mirror the input's: {rows[name]['output_uri']}"
        outputs[name] = storage.read_bytes(rows[name]["output_uri"])
        assert provenance_of(outputs[name]).get("model_version") == "v1", f"{name}: the output has no provenance"
        if task.name == "segmentation":
            mask = Image.open(io.BytesIO(outputs[name]))
            assert mask.mode == "P", f"{name}: a mask is a palette PNG of class indices"
            logits = support.forward(net, support.model_input(data, "RGB"))
            support.check_mask_output(name, logits, mask, seams=name == support.WIDE)
        else:
            assert rows[name]["output_depth"] == (16 if name == support.GREY16 else 8), name
            support.check_image_output(name, support.expected_image(task.name, net, data), outputs[name],
                                       support.reference_alpha(data), seams=name == support.WIDE)
    if task.name != "segmentation":  # the 16-bit grey input's output: 16 bits, grey for a restoration
        header = outputs[support.GREY16][24:26]  # IHDR: bit depth, colour type (0 grey, 2 RGB)
        assert header == bytes([16, 0 if task.name == "restoration" else 2]), f"{support.GREY16}: IHDR {header}"

    # `enhance` / `segment` on one file: the pixels apply wrote for it, for a one-tile, a two-tile, an RGBA and a
    # 16-bit grey image
    command = "segment" if task.name == "segmentation" else "enhance"
    for name in ("plain-a.png", support.WIDE, "rgba.png", support.GREY16):
        single = storage.join(root, "single", name)
        cli(command, f"{model}@production", storage.join(root, "incoming", name), single, "--workspace", ws)
        one, applied = storage.read_bytes(single), outputs[name]
        assert one[:26] == applied[:26], f"`{command}` and `apply` wrote {name} in another size, depth or mode"
        if task.name == "segmentation":
            same = np.array_equal(np.asarray(Image.open(io.BytesIO(one))), np.asarray(Image.open(io.BytesIO(applied))))
        else:
            (a, a_alpha), (b, b_alpha) = support.read_output(one), support.read_output(applied)
            same = np.array_equal(a, b) and (a_alpha is None) == (b_alpha is None) and \
                (a_alpha is None or np.array_equal(a_alpha, b_alpha))
        assert same, f"`{command}` and `apply` differ on {name}"
    lap("check outputs")
    return times


# Measured on 2 cores shared with other agents' test runs (2026-12-07): 13-32 s each by the machine's load (the
# killed training process, which imports torch and Prefect, is a third to a half of it); tests/lifecycle as a
# whole, Prefect and SeaweedFS start and stop included: 2.0 min on a quiet machine, 3.2 min on a busy one.
@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_lifecycle_local_workspace(task, tmp_path, api_url):
    times = run_lifecycle(TASKS[task], str(tmp_path / "root"), tmp_path, api_url)
    print(task, "local", times)


@pytest.mark.slow  # 11-32 s each, measured as above (SeaweedFS: its start and stop add ~15 s to the session)
@pytest.mark.s3
@pytest.mark.parametrize("task", list(TASKS))
def test_lifecycle_s3_workspace(task, s3_bucket, tmp_path, api_url):
    times = run_lifecycle(TASKS[task], f"s3://{s3_bucket}/lifecycle", tmp_path, api_url)
    print(task, "s3", times)
