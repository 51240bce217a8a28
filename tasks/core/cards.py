"""The model card: one typed, torch-free description of a registered model version.

A version folder's `config.json` (what rebuilds and runs the model) and `metadata.json` (where it came from)
are read into a card once; everything after that (apply's plan and shards, the predictors, evaluation,
promotion) reads the card's fields, never the files' dicts. A card is small and picklable, so it travels with
a shard to any worker, which loads the weights by card (`registry.load_weights`).

Folders written before the card existed lack some fields (out_channels, source, the weights digest): they are
derived from what those folders do hold, so every registry written by pixelmill still loads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pixelmill.tasks.core.classes import ClassMap
from pixelmill.tasks.core.model_tasks import MODEL_TASKS, source_ref

INPUT_RANGE = [0, 1]


class ModelCard(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str  # v1, v2, ...
    uri: str  # the version folder
    task: str  # a key of tasks/core/model_tasks.MODEL_TASKS
    arch: str  # models.factory's name
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)  # the factory's other arguments
    scale: int = Field(1, ge=1)
    in_channels: int = Field(3, ge=1)
    out_channels: int = Field(3, ge=1)  # 3 for images; the number of classes for segmentation
    classes: ClassMap | None = None  # segmentation: what each output channel means
    majority_class: int | None = None  # segmentation: the baseline's one answer
    source: str | None = None  # what it trained on: pairs:NAME or images:NAME; import:FILE for an imported model
    source_sha256: str | None = None  # import: the sha256 of the file it was imported from
    licence: str | None = None  # import: the licence its author gave (`models import --licence`)
    recipe_hash: str | None = None
    steps: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)  # the last validation's
    weights_sha256: str | None = None  # checked when the weights are loaded
    code_version: str | None = None
    created_at: datetime | None = None
    train_config: dict[str, Any] | None = None  # the TrainConfig it was trained with, as JSON

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in MODEL_TASKS:
            raise ValueError(f"unknown model task {task!r} (known: {', '.join(MODEL_TASKS)})")
        return task

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def width(self) -> int:
        """The architecture's base width, which activation memory grows with (64 when it has none)."""
        return int(self.arch_kwargs.get("base", 64))

    @property
    def input_scale(self) -> float:
        """The share of the input's size the network works at (segmentation's default 0.5; 1 without one)."""
        return float(self.arch_kwargs.get("input_scale", 1.0))

    def factory_config(self) -> dict:
        """What models.factory.build_model rebuilds the architecture from."""
        return {"arch": self.arch, **self.arch_kwargs}

    # ------------------------------------------------------------ the version folder's two JSON files

    def config_json(self) -> dict:
        config = {"task": self.task, "scale": self.scale, "in_channels": self.in_channels,
                  "out_channels": self.out_channels, "input_range": INPUT_RANGE}
        if self.classes is not None:
            config |= {"classes": self.classes.model_dump(mode="json"), "num_classes": len(self.classes.names)}
        if self.majority_class is not None:
            config["majority_class"] = self.majority_class
        if self.train_config is not None:
            config["train_config"] = self.train_config
        return config | {"model": self.factory_config()}

    def metadata_json(self) -> dict:
        return {"name": self.name, "version": self.version, "source": self.source,
                **({"source_sha256": self.source_sha256} if self.source_sha256 else {}),
                **({"licence": self.licence} if self.licence else {}), "recipe_hash": self.recipe_hash,
                "steps": self.steps, "metrics": self.metrics, "weights_sha256": self.weights_sha256,
                "code_version": self.code_version,
                "created_at": self.created_at.isoformat() if self.created_at else None}

    @classmethod
    def from_files(cls, uri: str, config: dict, metadata: dict, name: str | None = None,
                   version: str | None = None) -> ModelCard:
        """The card of the folder at `uri` from its config.json and metadata.json; fields that older folders
        lack are derived (name and version from the folder when metadata.json does not say)."""
        model = dict(config.get("model") or {})
        arch = model.pop("arch", "unknown")
        task = config.get("task") or "restoration"  # the first registries held restoration models only
        classes = ClassMap(**config["classes"]) if config.get("classes") else None
        source = metadata.get("source")
        if not source and (old := metadata.get("pairs_set") or metadata.get("dataset")):
            source = source_ref(task, old)
        return cls(
            name=metadata.get("name") or name, version=metadata.get("version") or version, uri=uri, task=task,
            arch=arch, arch_kwargs=model, scale=int(config.get("scale") or model.get("scale") or 1),
            in_channels=int(config.get("in_channels") or model.get("in_channels") or 3),
            out_channels=int(config.get("out_channels") or model.get("out_channels") or config.get("num_classes")
                             or 3),
            classes=classes, majority_class=config.get("majority_class"), source=source,
            source_sha256=metadata.get("source_sha256"), licence=metadata.get("licence"),
            recipe_hash=metadata.get("recipe_hash"), steps=metadata.get("steps"),
            metrics=metadata.get("metrics") or {}, weights_sha256=metadata.get("weights_sha256"),
            code_version=metadata.get("code_version"), created_at=metadata.get("created_at"),
            train_config=config.get("train_config"))
