"""The training loop without Prefect, on a tiny real paired set made by the crappify code."""


import pytest
import torch

from tasks import storage
from tasks.data import PairDataset, infer_scale, load_pairs
from tasks.train import TrainConfig, TrainHooks, load_state, one_cycle, train_model
from tests.helpers import crappify_local, ingest_local, texture_png


@pytest.fixture(scope="module")
def sr_pairs(tmp_path_factory):
    """A real x2 paired set (ingest + crappify sr-x2), every image in the train split."""
    root = tmp_path_factory.mktemp("train")
    src, ws = root / "src", str(root / "ws")
    for i in range(10):
        storage.write_bytes(str(src / f"t{i}.png"), texture_png(i))
    catalog = ingest_local(str(src), ws, split_fractions=(1.0, 0.0, 0.0))
    crappify_local(ws, recipe="sr-x2")
    records, skipped = load_pairs(catalog, "d-sr-x2", "train")
    assert len(records) == 10 and skipped == 0
    return records


TINY = {"arch": "unet-plain", "arch_kwargs": {"base": 8, "depth": 2}, "batch_size": 4, "crop": 16,
        "val_crop": 24, "loader_workers": 0, "lr": 3e-3}


def test_infer_scale_and_aligned_crops(sr_pairs):
    assert infer_scale(sr_pairs) == 2
    ds = PairDataset(sr_pairs, 2, crop=16, train=True)
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y.shape == (3, 32, 32)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    # the input really is the target shrunk: a 2x2 average of the target is close to the input
    down = torch.nn.functional.avg_pool2d(y.unsqueeze(0), 2)[0]
    assert float((down - x).abs().mean()) < 0.08


def test_training_reduces_the_loss(sr_pairs):
    # a direct (non-residual) net starts far from the target, so learning shows within a few steps
    direct = TINY | {"arch_kwargs": TINY["arch_kwargs"] | {"residual": False}}
    result = train_model(TrainConfig(**direct, steps=60, val_every=20), sr_pairs, sr_pairs, scale=2)
    losses = [h["val_loss"] for h in result.history]
    assert result.step == 60 and len(losses) == 3
    assert losses[-1] < losses[0] * 0.7
    assert result.images_per_s > 0


def test_residual_training_starts_at_the_baseline_and_keeps_up(sr_pairs):
    result = train_model(TrainConfig(**TINY, steps=40, val_every=20), sr_pairs, sr_pairs, scale=2)
    first, last = result.history[0], result.history[-1]
    assert first["val_psnr_y"] > first["val_psnr_y_baseline"] - 3  # near bicubic from the start
    assert last["val_loss"] <= first["val_loss"] * 1.05


def test_resume_continues_from_the_checkpoint_step(sr_pairs):
    saved: list[bytes] = []
    cfg = TrainConfig(**TINY, steps=20, val_every=10)
    train_model(cfg, sr_pairs, sr_pairs, 2, TrainHooks(save_checkpoint=saved.append))
    assert len(saved) == 2
    state = load_state(saved[0])
    assert state["step"] == 10
    resumed = train_model(cfg, sr_pairs, sr_pairs, 2, resume=state)
    assert resumed.step == 20 and [h["step"] for h in resumed.history] == [20]
    with pytest.raises(ValueError, match="another training config"):
        train_model(TrainConfig(**(TINY | {"lr": 1e-4}), steps=20), sr_pairs, sr_pairs, 2, resume=state)


def test_time_budget_stops_early(sr_pairs):
    result = train_model(TrainConfig(**TINY, steps=100_000, max_minutes=0.02, val_every=10_000), sr_pairs,
                         sr_pairs, 2)
    assert 0 < result.step < 100_000
    assert result.history[-1]["elapsed_s"] >= 1.2


def test_one_cycle_shape():
    assert one_cycle(0.0, 1.0, 0.25) == pytest.approx(1 / 25)
    assert one_cycle(0.25, 1.0, 0.25) == pytest.approx(1.0)
    assert one_cycle(1.0, 1.0, 0.25) < 1e-4
    values = [one_cycle(p / 100, 1.0, 0.25) for p in range(101)]
    assert values.index(max(values)) == 25


def test_bad_config_is_rejected():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="loss"):
        TrainConfig(loss="mse")
    with pytest.raises(ValidationError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_gan_stage_trains_generator_and_critic_from_a_pretrained_generator(sr_pairs):
    from tasks.train import GanConfig

    pre = train_model(TrainConfig(**TINY, steps=20, val_every=20), sr_pairs, sr_pairs, 2)
    weights = {k: v.clone() for k, v in pre.model.state_dict().items()}
    saved: list[bytes] = []
    cfg = TrainConfig(**TINY, steps=6, val_every=3, gan=GanConfig(init_from="x", critic_base=8, critic_layers=2))
    result = train_model(cfg, sr_pairs, sr_pairs, 2, TrainHooks(save_checkpoint=saved.append), init_weights=weights)
    assert result.step == 6 and len(result.history) == 2
    assert {"adversarial", "critic_loss", "val_psnr_y"} <= result.history[-1].keys()
    changed = any(not torch.equal(weights[k], v) for k, v in result.model.state_dict().items())
    assert changed  # the generator was updated by the adversarial stage
    state = load_state(saved[0])
    assert state["step"] == 3 and "critic" in state
    resumed = train_model(cfg, sr_pairs, sr_pairs, 2, resume=state, init_weights=weights)
    assert resumed.step == 6


def test_missing_feature_weights_stop_before_the_first_step(sr_pairs, tmp_path, monkeypatch):
    from tasks.errors import ConfigError

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    steps_taken = []
    hooks = TrainHooks(on_validation=steps_taken.append)
    with pytest.raises(ConfigError, match="vgg16_bn") as info:
        train_model(TrainConfig(**TINY, loss="feature", steps=5, val_every=1), sr_pairs, sr_pairs, 2, hooks)
    assert "feature_weights" in info.value.message and steps_taken == []
