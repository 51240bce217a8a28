"""The CUDA paths: AMP training (one GradScaler per optimizer, the GAN critic's too), channels_last, resume,
segmentation metrics on the device, and bulk apply with fp16 autocast against the CPU result.

Skipped without a CUDA device (CI has none); run on a GPU machine with `pytest tests/gpu`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.inference.apply import ApplyConfig, apply_local
from pixelmill.tasks.prep.scenes import write_synthetic_scenes
from pixelmill.tasks.training.config import GanConfig, TrainConfig
from pixelmill.tasks.training.loop import load_state, train_model
from pixelmill.tasks.training.objectives import build_objective
from tests.helpers import crappify_local, ingest_local, make_image, texture_png

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SET = "d-sr-x2"
TINY = {"arch": "unet-plain", "arch_kwargs": {"base": 16, "depth": 2}, "batch_size": 8, "crop": 32,
        "val_crop": 48, "loader_workers": 0, "lr": 3e-3, "device": "cuda"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    src, ws = root / "src", str(root / "ws")
    for i in range(12):
        storage.write_bytes(str(src / f"t{i}.png"), texture_png(i, size=96))
    ingest_local(str(src), ws, split_fractions=(0.75, 0.25, 0.0))
    crappify_local(ws, recipe="sr-x2")
    return ws


def finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.state_dict().values() if p.is_floating_point())


def test_amp_training_on_cuda_learns_and_resumes_exactly(ws, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # no atomics-order noise in the comparison
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = TrainConfig(**TINY, steps=40, val_every=20)
    result = train_model(build_objective(cfg, ws, SET), cfg)
    assert next(result.model.parameters()).device.type == "cuda" and finite(result.model)
    first, last = result.history[0], result.history[-1]
    assert last["step"] == 40 and last["val_psnr_y"] > first["val_psnr_y"] - 0.5, result.history
    assert last["train_loss"] < first["train_loss"] * 1.5

    saved: list[bytes] = []

    class Stop(Exception):
        pass

    def save(data: bytes) -> None:
        saved.append(data)
        raise Stop

    from pixelmill.tasks.training.loop import TrainHooks

    with pytest.raises(Stop):
        train_model(build_objective(cfg, ws, SET), cfg, hooks=TrainHooks(save_checkpoint=save))
    state = load_state(saved[0])
    assert state["step"] == 20 and state["amp"]["model"]["scale"] > 0  # the loss scale travels with the run
    resumed = train_model(build_objective(cfg, ws, SET), cfg, resume=state)
    assert resumed.step == 40 and finite(resumed.model)
    # bitwise equality is not promised on CUDA: the resume may drift no more than a second uninterrupted run
    again = train_model(build_objective(cfg, ws, SET), cfg)
    noise, drift = gaps(result.model, again.model), gaps(result.model, resumed.model)
    print("run to run:", noise[:3], "\nresumed:", drift[:3])
    assert drift[0][0] <= max(10 * noise[0][0], 1e-3), (drift[:5], noise[:5])


def gaps(a: torch.nn.Module, b: torch.nn.Module) -> list[tuple[float, str]]:
    """(largest absolute difference, name) per floating-point tensor of two models' states, largest first."""
    sb = b.state_dict()
    return sorted(((float((t - sb[k]).abs().max()), k) for k, t in a.state_dict().items() if t.is_floating_point()),
                  reverse=True)


def test_gan_stage_on_cuda_trains_generator_and_critic_with_amp(ws):
    cfg = TrainConfig(**TINY, steps=10, val_every=10)
    objective = build_objective(cfg, ws, SET)
    base = train_model(objective, cfg)
    ref = registry.save(ws, "gan-base-cuda", base.model.cpu(), config=objective.registry_config(), metadata={}).ref
    gan = TrainConfig(**TINY, steps=8, val_every=4,
                      gan=GanConfig(init_from=ref, critic_base=8, critic_layers=2, critic_threshold=10.0))
    g_objective = build_objective(gan, ws, SET)
    result = train_model(g_objective, gan)
    assert result.step == 8 and {"adversarial", "critic_loss"} <= result.history[-1].keys()
    assert finite(result.model) and finite(g_objective.critic)
    assert next(g_objective.critic.parameters()).device.type == "cuda" and g_objective.critic_optimizer.state


def test_segmentation_on_cuda_beats_the_majority_class(tmp_path):
    files = write_synthetic_scenes(str(tmp_path / "bucket"), 24, size=(96, 64))
    ws = str(tmp_path / "ws")
    ingest_local(files.images, ws, dataset="scenes", masks=files.masks, split_fractions=(0.75, 0.25, 0.0))
    cfg = TrainConfig(task="segmentation", classes="scenes", arch="unet-plain", arch_kwargs={"base": 16, "depth": 2},
                      batch_size=8, crop=64, val_crop=None, loader_workers=0, lr=3e-3, device="cuda",
                      steps=150, val_every=75)
    result = train_model(build_objective(cfg, ws, "scenes"), cfg)
    last = result.history[-1]
    assert finite(result.model)
    assert last["val_miou"] > last["val_baseline_miou"], last
    assert last["val_global_acc"] > last["val_baseline_global_acc"], last


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_apply_on_cuda_matches_the_cpu_result(tmp_path):
    from pixelmill.models.factory import build_model

    ws = str(tmp_path / "ws")
    torch.manual_seed(0)
    model = build_model({"arch": "unet-plain", "scale": 2, "base": 16, "depth": 2, "residual": True})
    ref = registry.save(ws, "sr", model, {"task": "restoration", "scale": 2, "in_channels": 3,
                                          "input_range": [0, 1]}, {"pairs_set": "test"}).ref
    src = tmp_path / "in"
    src.mkdir()
    sizes = [(300, 200), (517, 389), (64, 64), (1100, 700), (333, 333), (90, 601)]
    for i, (w, h) in enumerate(sizes):
        make_image(w, h, seed=i).save(src / f"img{i}.png")
    # tiles of 256 with overlap: the two large images go in several tiles, the small ones share batches
    common = dict(tile=256, overlap=32, batch_size=4)
    apply_local(ws, ref, str(src), str(tmp_path / "cpu"), ApplyConfig(device="cpu", **common))
    apply_local(ws, ref, str(src), str(tmp_path / "gpu"), ApplyConfig(device="cuda", **common))
    rows = Catalog(ws).read("predictions", "sr").to_pylist()
    assert len(rows) == 2 * len(sizes) and all(r["status"] == "ok" for r in rows), rows
    for i, (w, h) in enumerate(sizes):
        cpu = np.asarray(Image.open(next((tmp_path / "cpu").glob(f"img{i}*.png"))))
        gpu = np.asarray(Image.open(next((tmp_path / "gpu").glob(f"img{i}*.png"))))
        assert cpu.shape == gpu.shape == (2 * h, 2 * w, 3)
        assert psnr(cpu, gpu) > 40, (i, psnr(cpu, gpu))  # fp16 autocast vs float32: rounding, not content
