"""Each model task's own defaults, a time budget that the schedule fits, and segmentation trained at the model's
resolution: what `pixelmill train segmentation --max-minutes 15` means, without Prefect."""

from __future__ import annotations

import itertools

import pytest
import torch
from pydantic import ValidationError

from pixelmill.tasks.prep.scenes import write_synthetic_scenes
from pixelmill.tasks.training import loop
from pixelmill.tasks.training.config import DEFAULT_STEPS, TASK_DEFAULTS, TrainConfig
from pixelmill.tasks.training.loop import TrainHooks, train_model
from pixelmill.tasks.training.objectives import build_objective
from tests.helpers import ingest_local


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared 2-core machine
    yield
    torch.set_num_threads(n)


def test_a_field_left_unset_takes_its_tasks_default():
    seg, rest = TrainConfig(task="segmentation"), TrainConfig()
    for field, value in TASK_DEFAULTS["segmentation"].items():
        got = getattr(seg, field)
        assert (got.model_dump() if hasattr(got, "model_dump") else got) == value, field
    assert (rest.crop, rest.lr, rest.val_crop, rest.arch_kwargs, rest.loss_resolution) == (48, 1e-3, 96, {}, "input")
    assert TrainConfig(task="colorize").crop == rest.crop
    # what the user sets wins; arch_kwargs merge over the task's, so a wider net keeps the half resolution
    mine = TrainConfig(task="segmentation", crop=320, arch_kwargs={"base": 48})
    assert mine.crop == 320 and mine.arch_kwargs == {"input_scale": 0.5, "base": 48}
    assert TrainConfig(task="segmentation", arch_kwargs={"input_scale": 1.0}).arch_kwargs == {"input_scale": 1.0}
    # the dumped config (the registry's record) rebuilds the same config, defaults included
    assert TrainConfig(**seg.model_dump()) == seg


def test_steps_follow_the_budget_given():
    assert TrainConfig().steps == DEFAULT_STEPS  # neither: the default step count
    timed = TrainConfig(max_minutes=15)
    assert timed.steps is None and timed.step_limit == float("inf")  # minutes only: as many steps as fit
    both = TrainConfig(steps=500, max_minutes=15)
    assert both.steps == 500
    # the schedule's position is whichever budget is further spent
    assert timed.progress(10_000, 450) == pytest.approx(0.5)
    assert both.progress(250, 60) == pytest.approx(0.5) and both.progress(100, 675) == pytest.approx(0.75)
    assert TrainConfig(steps=100).progress(100, 1e9) == 1.0


def test_augmentation_settings_are_checked():
    with pytest.raises(ValidationError, match="scale_range"):
        TrainConfig(task="segmentation", augment={"scale_range": (2.0, 1.0)})
    with pytest.raises(ValidationError, match="color_jitter"):
        TrainConfig(task="segmentation", augment={"color_jitter": (0.2, 1.5, 0.0, 0.0)})


@pytest.fixture(scope="module")
def scenes_ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("taskdefaults")
    files = write_synthetic_scenes(str(root / "bucket"), 8, size=(96, 64))
    ws = str(root / "ws")
    ingest_local(files.images, ws, dataset="scenes", masks=files.masks, split_fractions=(0.75, 0.25, 0.0))
    return ws


SEG = {"task": "segmentation", "classes": "scenes", "arch_kwargs": {"base": 8, "depth": 2}, "batch_size": 2,
       "crop": 64, "loader_workers": 0, "val_every": 1000}


def test_minutes_alone_train_until_the_time_is_spent_with_the_schedule_fitted(scenes_ws, monkeypatch):
    """A clock that advances 1 s per reading: 0.5 minutes is about 30 steps, whatever the machine's speed."""
    ticks = itertools.count()
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(ticks)))
    cfg = TrainConfig(**SEG, max_minutes=0.5)
    result = train_model(build_objective(cfg, scenes_ws, "scenes"), cfg, hooks=TrainHooks())
    assert 20 <= result.step <= 31  # stopped by the minutes, not by a step count
    last = result.history[-1]
    assert last["step"] == result.step and last["lr"] < cfg.lr * 0.05  # annealed by the end: the schedule fitted


def test_segmentation_trains_on_crops_at_the_models_resolution(scenes_ws):
    cfg = TrainConfig(**SEG, steps=1)
    objective = build_objective(cfg, scenes_ws, "scenes")
    assert objective.train_scale == 0.5
    train_ds, val_ds = objective.datasets(None)
    x, y = train_ds[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)  # crop 64 source pixels at half resolution
    vx, vy = val_ds[0]
    assert vx.shape[-2:] == vy.shape == (64, 96)  # validation: whole images through the model's own resize
    model = objective.build_model()
    seen: list[tuple] = []
    model.forward_native = lambda t: seen.append(tuple(t.shape)) or torch.zeros(t.shape[0], objective.num_classes, *t.shape[-2:],
                                                                                  requires_grad=True)
    objective.setup(model, torch.device("cpu"))
    loss, _ = objective.training_step(model, [x[None], y[None]], loop.Amp(torch.device("cpu"), 1.0))
    assert seen == [(1, 3, 32, 32)] and loss.requires_grad  # the crop went to the network unresized
    # the loss at the input's resolution: full-size crops, and the model's forward resizes in and out
    at_input = build_objective(TrainConfig(**SEG, steps=1, loss_resolution="input"), scenes_ws, "scenes")
    assert at_input.train_scale == 1.0 and at_input.datasets(None)[0][0][0].shape == (3, 64, 64)


def test_segmentation_augmentation_comes_from_the_config(scenes_ws):
    plain = TrainConfig(**SEG, steps=1)
    jittered = TrainConfig(**SEG, steps=1, augment={"scale_range": (0.5, 2.0), "color_jitter": (0.4, 0.4, 0.4, 0.1)})
    a = build_objective(plain, scenes_ws, "scenes").datasets(None)[0]
    b = build_objective(jittered, scenes_ws, "scenes").datasets(None)[0]
    assert b.scale_range == (0.25, 1.0) and b.color_jitter == (0.4, 0.4, 0.4, 0.1)  # scaled to the model's side
    assert a.scale_range == (0.5, 0.5) and a.color_jitter == (0.0, 0.0, 0.0, 0.0)
    assert not torch.equal(a[3][0], b[3][0])
