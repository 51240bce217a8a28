"""Models in and out through the CLI: checkpoints of two architectures built with spandrel's own classes and random
weights are imported, applied, evaluated and promoted like trained models; any model exports to ONNX (checked
here against ONNX Runtime at three odd sizes) and to a Hugging Face style folder with a model card."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from pixelmill.flows.cli import app
from pixelmill.models.factory import build_model
from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.training.runs import evaluate_registered
from tests.helpers import crappify_local, ingest_local, noise_png, texture_png
from tests.models.test_spandrel_net import NETWORKS

runner = CliRunner()
PAIRS = "tex-sr-x2"
ODD_SIZES = ((37, 53), (64, 91), (101, 77))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> str:
    """A workspace with a small x2 paired set (valid split included) and nothing in its registry yet."""
    root = tmp_path_factory.mktemp("byom")
    for i in range(8):
        storage.write_bytes(str(root / "src" / f"t{i}.png"), texture_png(i, 48))
    ws = str(root / "ws")
    ingest_local(str(root / "src"), ws, dataset="tex", split_fractions=(0.5, 0.5, 0.0))
    crappify_local(ws, dataset="tex", recipe="sr-x2")
    return ws


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """Files as their authors publish them: Real-ESRGAN's .pth (weights under params_ema), SwinIR as safetensors."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    torch.save({"params_ema": NETWORKS["ESRGAN"]().state_dict()}, root / "RealESRGAN_tiny_x2.pth")
    save_file(NETWORKS["SwinIR"]().state_dict(), str(root / "swinir_tiny_x2.safetensors"))
    return {"ESRGAN": str(root / "RealESRGAN_tiny_x2.pth"), "SwinIR": str(root / "swinir_tiny_x2.safetensors")}


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("arch", list(NETWORKS))
def test_import_apply_evaluate_promote(ws, checkpoints, tmp_path, arch):
    name = f"byo-{arch.lower()}"
    out = invoke("models", "import", checkpoints[arch], "--name", name, "--licence", "BSD-3-Clause",
                 "--workspace", ws)
    assert f"imported {name}:v1: {arch} x2, 3 -> 3 channels" in out and "licence BSD-3-Clause" in out
    card = registry.resolve(ws, name)
    digest = hashlib.sha256(open(checkpoints[arch], "rb").read()).hexdigest()
    assert (card.task, card.arch, card.scale, card.source_sha256, card.licence) == (
        "restoration", "spandrel", 2, digest, "BSD-3-Clause")
    assert card.arch_kwargs["spandrel_arch"] == arch and card.source.startswith("import:")
    imported = registry.read_json(card, "metadata.json")["imported"]
    assert imported["architecture"] == arch and imported["purpose"] == "SR"

    # apply over a folder, in tiles smaller than the images
    for i, (w, h) in enumerate(((40, 30), (23, 37))):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"p{i}.png").write_bytes(noise_png(w, h, seed=i))
    out = invoke("apply", name, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 "--workspace", ws, "--tile", "32", "--overlap", "8")
    assert "2 processed, 0 skipped, 0 failed" in out
    for i, (w, h) in enumerate(((40, 30), (23, 37))):
        with Image.open(tmp_path / "out" / f"p{i}.png") as im:
            assert im.size == (2 * w, 2 * h)

    # evaluate (random weights: bicubic wins, so --promote refuses), then promote by hand and use the alias
    out = invoke("evaluate", name, "--data", f"pairs:{PAIRS}", "--promote", "production", "--workspace", ws)
    assert f"{name}:v1 on {PAIRS}/valid" in out and "gain over the baseline" in out and "not promoted" in out
    rows = Catalog(ws).read("evaluations", name).to_pylist()
    assert {r["method"] for r in rows if r["scope"] == "mean"} == {"model", "baseline"}
    assert f"{name}@production -> v1" in invoke("models", "promote", f"{name}:v1", "production", "--workspace", ws)
    src, dst = str(tmp_path / "in" / "p0.png"), str(tmp_path / "one.png")
    invoke("enhance", f"{name}@production", src, dst, "--workspace", ws, "--tile", "32", "--overlap", "8")
    with Image.open(dst) as one, Image.open(tmp_path / "out" / "p0.png") as bulk:
        assert np.array_equal(np.asarray(one), np.asarray(bulk))  # one image and bulk give the same pixels

    lineage = invoke("lineage", name, "--workspace", ws)
    assert "imported from " in lineage and "licence BSD-3-Clause" in lineage


def test_import_refuses_what_it_cannot_run(ws, checkpoints, tmp_path):
    seg = runner.invoke(app, ["models", "import", checkpoints["ESRGAN"], "--name", "s", "--task", "segmentation",
                              "--workspace", ws])
    assert seg.exit_code == 1 and "spandrel's architectures are super-resolution and restoration models" in seg.output
    torch.save({"weight": torch.zeros(3, 3)}, tmp_path / "not_a_model.pth")
    unknown = runner.invoke(app, ["models", "import", str(tmp_path / "not_a_model.pth"), "--name", "x",
                                  "--workspace", ws])
    assert unknown.exit_code == 1 and "detects no architecture it knows" in unknown.output
    (tmp_path / "weights.txt").write_text("hello")
    text = runner.invoke(app, ["models", "import", str(tmp_path / "weights.txt"), "--name", "x", "--workspace", ws])
    assert text.exit_code == 1 and "cannot import a .txt file" in text.output
    assert not runner.invoke(app, ["models", "list", "--workspace", ws]).output.count("x:v1")


def onnx_matches_torch(path: str, model: torch.nn.Module, scale: int) -> None:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for h, w in ODD_SIZES:
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h + w))
        with torch.inference_mode():
            expected = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == expected.shape == (1, 3, scale * h, scale * w)
        assert np.abs(got - expected).max() <= 1e-3, (h, w)


@pytest.mark.parametrize("which", ["unet-plain", "segmentation-at-half-size", "ESRGAN"])
def test_export_onnx_matches_torch_at_odd_sizes(ws, checkpoints, tmp_path, which):
    scale = 2
    if which == "unet-plain":  # a pixelmill U-Net: pads to its stride inside the graph
        net = build_model({"arch": "unet-plain", "scale": 2, "base": 8, "depth": 3, "residual": True})
        ref = registry.save(ws, "unet-onnx", net, config={"task": "restoration", "scale": 2}, metadata={}).ref
    elif which == "segmentation-at-half-size":  # the segmentation default: shrinks its input inside the graph
        scale = 1
        net = build_model({"arch": "unet-plain", "out_channels": 3, "base": 8, "depth": 3, "input_scale": 0.5})
        classes = {"names": ["sky", "road", "car"]}
        ref = registry.save(ws, "seg-onnx", net, config={"task": "segmentation", "scale": 1, "classes": classes,
                                                         "majority_class": 0}, metadata={}).ref
    else:
        invoke("models", "import", checkpoints["ESRGAN"], "--name", "esrgan-onnx", "--workspace", ws)
        ref = "esrgan-onnx:v1"
    out = invoke("models", "export", ref, "--onnx", str(tmp_path / "m.onnx"), "--workspace", ws)
    assert "ONNX Runtime matches torch within" in out and "37x53, 64x91, 101x77" in out
    onnx_matches_torch(str(tmp_path / "m.onnx"), registry.load_weights(registry.resolve(ws, ref)), scale)
    props = ort.InferenceSession(str(tmp_path / "m.onnx")).get_modelmeta().custom_metadata_map
    assert props["pixelmill_model"] == ref and json.loads(props["pixelmill_config"])["scale"] == scale


def test_export_folder_writes_the_hugging_face_layout(ws, tmp_path):
    net = build_model({"arch": "unet-plain", "scale": 2, "base": 8, "depth": 2, "residual": True})
    card = registry.save(ws, "sr-hf", net, config={"task": "restoration", "scale": 2, "train_config": {"steps": 40}},
                         metadata={"source": f"pairs:{PAIRS}", "steps": 40, "metrics": {"val_psnr_y": 27.5},
                                   "recipe_hash": Catalog(ws).read("pairs", PAIRS)["recipe_hash"][0].as_py()})
    evaluate_registered(ws, card.ref, PAIRS, "valid")  # an evaluation row for the card, without Prefect
    out = invoke("models", "export", card.ref, "--folder", str(tmp_path / "hf"), "--workspace", ws)
    assert f"/hf: weights.safetensors, config.json, metadata.json, README.md ({card.ref})" in out
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert files == ["README.md", "config.json", "metadata.json", "weights.safetensors"]
    assert (tmp_path / "hf" / "weights.safetensors").read_bytes() == storage.read_bytes(
        storage.join(card.uri, "weights.safetensors"))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model"]["arch"] == "unet-plain"
    readme = (tmp_path / "hf" / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: pixelmill\npipeline_tag: image-to-image\n")
    for text in (f"# {card.ref}", "| task | restoration |", "| scale | 2 |", "| val_psnr_y | 27.5 |",
                 f"| pairs:{PAIRS} | valid | model |", f"| pairs:{PAIRS} | valid | baseline |",
                 f"`pairs:{PAIRS}`: ", "data set `images:tex`", "Degradation recipe: sr-x2", "(the model's)",
                 "Trained 40 steps.", '"steps": 40'):
        assert text in readme, text
    # the folder is a model pixelmill loads as it is
    again = registry.resolve(ws, str(tmp_path / "hf"))
    x = torch.rand(1, 3, 21, 17)
    with torch.inference_mode():
        assert torch.equal(registry.load_weights(again)(x), registry.load_weights(card)(x))


def test_export_says_what_to_install_and_what_to_give(ws, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    missing = runner.invoke(app, ["models", "export", "any", "--onnx", "m.onnx", "--workspace", ws])
    assert missing.exit_code == 1
    assert "error: ONNX export needs onnxruntime, not installed" in missing.output
    assert "pip install 'pixelmill[onnx]'" in missing.output
    nothing = runner.invoke(app, ["models", "export", "any", "--workspace", ws])
    assert nothing.exit_code == 1 and "say where to export: --onnx FILE and/or --folder DIR" in nothing.output
