"""Train, evaluate, promote and enhance through the flows and the CLI, on a real Prefect server."""

import functools
import pickle

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pixelmill.flows.cli import app
from pixelmill.flows.crappify import run_crappify
from pixelmill.flows.evaluate import evaluate
from pixelmill.flows.ingest import ingest
from pixelmill.flows.train import train
from pixelmill.tasks import steps
from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.prep.crappify import CrappifyConfig
from pixelmill.tasks.prep.ingest import IngestConfig
from pixelmill.tasks.training.loop import TrainConfig
from tests.helpers import texture_png
from tests.tasks.training.test_train import TINY

pytestmark = pytest.mark.usefixtures("prefect_server")
runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, prefect_server):
    root = tmp_path_factory.mktemp("trainflow")
    for i in range(12):
        storage.write_bytes(str(root / "src" / f"t{i}.png"), texture_png(i, 64))
    ws = str(root / "ws")
    ingest(str(root / "src"), dataset="tex", workspace=ws, config=IngestConfig(split_fractions=(0.7, 0.3, 0.0)))
    run_crappify("tex", CrappifyConfig(recipe="sr-x2"), workspace=ws)
    return ws


def scaled_correction(workspace: str, ref: str, name: str, factor: float) -> str:
    """Register a copy of `ref` whose learned correction (the residual head) is scaled by `factor`:
    0 gives exactly the bicubic baseline, 0.5 half of what the model learned."""
    card = registry.resolve(workspace, ref)
    model = registry.load_weights(card)
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(factor)
    return registry.save(workspace, name, model, config={"task": card.task, "scale": card.scale},
                         metadata={"source": card.source}).ref


@pytest.mark.slow  # measured 27 s on 2 shared, loaded cores
def test_train_evaluate_promote_enhance(workspace, tmp_path):
    cfg = TrainConfig(**TINY, steps=40, val_every=20)
    first = train("tex-sr-x2", "tiny", cfg, workspace=workspace)
    assert first["model"] == "tiny:v1" and first["steps"] == 40 and first["scale"] == 2
    files = {p.rsplit("/", 1)[-1] for p in storage.iter_files(first["uri"]) for p in [p.uri]}
    assert files == {"weights.safetensors", "config.json", "metadata.json"}
    meta = registry.read_json(registry.resolve(workspace, "tiny"), "metadata.json")
    assert meta["pairs_set"] == "tex-sr-x2" and meta["steps"] == 40 and "val_psnr_y" in meta["metrics"]

    result = evaluate("tiny", "tex-sr-x2", split="valid", promote="production", workspace=workspace)
    assert result["images"] >= 1 and result["baseline"] == "bicubic"
    assert result["gain_psnr_y"] > 0, "a trained residual net beats bicubic on these textures"
    assert result["promoted"] is True and registry.resolve(workspace, "tiny@production").version == "v1"
    rows = Catalog(workspace).read("evaluations", "tiny").to_pylist()
    assert {r["method"] for r in rows} == {"model", "baseline"}
    assert len([r for r in rows if r["scope"] == "image"]) == 2 * result["images"]
    assert {r["source"] for r in rows} == {"pairs:tex-sr-x2"}  # what it was scored on, typed
    assert all(r["item_id"] for r in rows if r["scope"] == "image")  # restoration scores pairs: their ids

    listed = runner.invoke(app, ["models", "list", "--workspace", workspace])
    assert listed.exit_code == 0 and "tiny:v1" in listed.output and "@production" in listed.output

    src = str(tmp_path / "in.png")
    Image.new("RGB", (21, 17), (90, 120, 200)).save(src)
    out = str(tmp_path / "out.png")
    result = runner.invoke(app, ["enhance", "tiny@production", src, out, "--workspace", workspace])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (42, 34)


@pytest.mark.slow  # measured 22 s on 2 shared, loaded cores
def test_promotion_rules_each_decide(workspace):
    """Every rule with a model that wins or loses it: beat the baseline, then beat the alias's current model."""
    if not registry.versions(workspace, "rules"):
        train("tex-sr-x2", "rules", TrainConfig(**TINY, steps=40, val_every=40), workspace=workspace)
    best = registry.resolve(workspace, "rules:v1").ref
    registry.set_alias(workspace, registry.resolve(workspace, best), "production")

    bicubic = scaled_correction(workspace, best, "rules", 0.0)  # exactly the baseline: does not beat it
    lost = evaluate(bicubic, "tex-sr-x2", promote="production", workspace=workspace)
    assert lost["model_scores"]["psnr_y"] == pytest.approx(lost["baseline_scores"]["psnr_y"], abs=1e-6)
    assert lost["promoted"] is False and "does not beat the baseline" in lost["promotion_reason"]

    half = scaled_correction(workspace, best, "rules", 0.5)  # beats bicubic, loses to the current alias
    second = evaluate(half, "tex-sr-x2", promote="production", workspace=workspace)
    full = evaluate(best, "tex-sr-x2", workspace=workspace)["model_scores"]["psnr_y"]
    assert second["baseline_scores"]["psnr_y"] < second["model_scores"]["psnr_y"] < full
    assert second["promoted"] is False and "rules@production (v1) scores" in second["promotion_reason"]
    assert registry.resolve(workspace, "rules@production").ref == best

    registry.set_alias(workspace, registry.resolve(workspace, half), "production")
    won = evaluate(best, "tex-sr-x2", promote="production", workspace=workspace)  # beats both
    assert won["promoted"] is True and "previous v3" in won["promotion_reason"]
    assert registry.resolve(workspace, "rules@production").ref == best


@pytest.mark.slow  # measured 44 s on 2 shared, loaded cores
def test_resume_after_a_crash_continues(workspace):
    cfg = TrainConfig(**TINY, steps=20, val_every=10)
    train("tex-sr-x2", "resumable", cfg, workspace=workspace)
    resumed = train("tex-sr-x2", "resumable", TrainConfig(**TINY, steps=30, val_every=10), workspace=workspace,
                    resume=True)
    assert resumed["steps"] == 30 and resumed["model"] == "resumable:v2"
    meta = registry.read_json(registry.resolve(workspace, "resumable:v2"), "metadata.json")
    assert meta["steps"] == 30


@pytest.mark.slow  # measured 7 s on 2 shared, loaded cores
def test_tasks_exchange_references_not_tensors(workspace):
    """What crosses a task boundary in the train and evaluate flows is a config or a summary: small, no tensors."""
    seen: list[tuple[str, int, str]] = []

    def watch(task_obj):
        original = task_obj.fn

        @functools.wraps(original)  # Prefect binds parameters by the function's signature
        def recorded(*args, **kwargs):
            result = original(*args, **kwargs)
            for label, value in (("parameters", (args, kwargs)), ("result", result)):
                data = pickle.dumps(value)
                seen.append((task_obj.name, len(data), label))
                assert b"torch" not in data, f"{task_obj.name} {label} carries torch objects"
            return result

        return recorded

    originals = {t: t.fn for t in (steps.train_model, steps.evaluate_model)}
    try:
        for t in originals:
            t.fn = watch(t)
        trained = train("tex-sr-x2", "refs", TrainConfig(**TINY, steps=4, val_every=2), workspace=workspace)
        evaluate(trained["model"], "tex-sr-x2", workspace=workspace)
    finally:
        for t, fn in originals.items():
            t.fn = fn
    assert {name for name, _, _ in seen} == {"train_model", "evaluate_model"}
    assert all(size < 20_000 for _, size, _ in seen), seen


@pytest.fixture
def tiny(workspace) -> str:
    """The model `tiny` (v1) that test_train_evaluate_promote_enhance trains; registered untrained here when that
    slow test did not run (`make test-fast`), so that no test depends on another test having run."""
    if not registry.versions(workspace, "tiny"):
        from pixelmill.models.factory import build_model

        net = build_model({"arch": "unet-plain", "scale": 2, "base": 8, "depth": 2, "residual": True})
        registry.save(workspace, "tiny", net, config={"task": "restoration", "scale": 2, "in_channels": 3},
                      metadata={"source": "tex-sr-x2"})
    return "tiny"


@pytest.mark.parametrize("args,message", [
    (["evaluate", "nope", "--pairs", "tex-sr-x2"], "error: unknown model 'nope'"),
    (["evaluate", "tiny@staging", "--pairs", "tex-sr-x2"], "has no alias 'staging'"),
    (["evaluate", "tiny:v99", "--pairs", "tex-sr-x2"], "has no version 'v99'"),
    (["train", "restoration", "--pairs", "missing-set", "--name", "m"], "unknown paired set 'missing-set'"),
    (["train", "restoration", "--pairs", "tex-sr-x2", "--name", "never-trained", "--resume"],
     "no checkpoint to resume"),
])
def test_clear_errors(workspace, tiny, args, message):
    result = runner.invoke(app, [*args, "--workspace", workspace])
    assert result.exit_code == 1, result.output
    assert message in result.output and "hint:" in result.output


def test_corrupt_weights_are_a_clear_error(workspace):
    train("tex-sr-x2", "fragile", TrainConfig(**TINY, steps=2, val_every=2), workspace=workspace)
    card = registry.resolve(workspace, "fragile")
    storage.write_bytes(storage.join(card.uri, "weights.safetensors"), b"garbage")
    with pytest.raises(PixelmillError, match="cannot be loaded"):
        registry.load_weights(card)


def test_enhance_rejects_a_broken_input(workspace, tiny, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    result = runner.invoke(app, ["enhance", "tiny", str(bad), str(tmp_path / "o.png"), "--workspace", workspace])
    assert result.exit_code == 1 and "not_image" in result.output


@pytest.mark.slow  # two trainings, one a GAN stage: 5 s call (past 600 s before critic_max_steps bounded the critic)
def test_gan_fine_tuning_from_the_cli(workspace, tmp_path):
    import yaml

    train("tex-sr-x2", "gan-base", TrainConfig(**TINY, steps=10, val_every=10), workspace=workspace)
    config = tmp_path / "gan.yaml"
    config.write_text(yaml.safe_dump(TINY | {"val_every": 2, "gan": {"critic_base": 8, "critic_layers": 2}}))
    args = ["train", "restoration", "--pairs", "tex-sr-x2", "--name", "gan-tuned", "--gan-from", "gan-base",
            "--config", str(config), "--steps", "4", "--workspace", workspace]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = registry.read_json(registry.resolve(workspace, "gan-tuned"), "metadata.json")
    assert meta["steps"] == 4 and "critic_loss" in meta["metrics"]
    wrong = runner.invoke(app, [*args[:-2], "--arch", "unet-resnet18", "--workspace", workspace])
    assert wrong.exit_code == 1 and "does not match the GAN stage's model" in wrong.output
