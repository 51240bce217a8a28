"""The model tasks pixelmill knows, torch-free: per task, the data it trains on, its objective and its predictor.

Training builds its OBJECTIVES and inference its PREDICTORS from this one table, by class path, so neither room
imports the other and a task can never have one without the other (a test checks every path imports). A new
model task is an objective class (tasks/training), a predictor class (tasks/inference), the fields its model
card needs (tasks/core/cards.py) and one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from pixelmill.tasks.core.errors import ConfigError

DataKind = Literal["pairs", "images"]


@dataclass(frozen=True)
class ModelTask:
    name: str
    data: DataKind  # what `source` names: a paired set (pairs:NAME) or a data set (images:NAME)
    command: str  # the CLI command that runs a model of this task on one file
    objective: str  # "module:Class" in tasks/training
    predictor: str  # "module:Class" in tasks/inference
    output: Literal["image", "mask"] = "image"  # an image follows apply's --format; a mask is always a PNG


_TRAINING, _INFERENCE = "pixelmill.tasks.training", "pixelmill.tasks.inference.predictors"
MODEL_TASKS: dict[str, ModelTask] = {t.name: t for t in (
    ModelTask("restoration", "pairs", "enhance", f"{_TRAINING}.objectives:RestorationObjective",
              f"{_INFERENCE}:RestorationPredictor"),
    ModelTask("colorize", "pairs", "enhance", f"{_TRAINING}.objectives:ColorizeObjective",
              f"{_INFERENCE}:ColorizePredictor"),
    ModelTask("segmentation", "images", "segment", f"{_TRAINING}.segmentation:SegmentationObjective",
              f"{_INFERENCE}:SegmentationPredictor", output="mask"),
)}


def model_task(name: str) -> ModelTask:
    if name not in MODEL_TASKS:
        raise ConfigError(f"unknown model task {name!r}", f"valid tasks: {', '.join(MODEL_TASKS)}")
    return MODEL_TASKS[name]


def import_path(path: str) -> type:
    """The class a "module:Class" path names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def source_ref(task: str, name: str) -> str:
    """The typed reference of what a model of `task` trained on: `pairs:NAME` or `images:NAME`."""
    return f"{model_task(task).data}:{name}"
