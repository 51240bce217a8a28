"""Whole training and evaluation runs by reference, as the Prefect tasks call them.

In: a workspace URL, a source name (a pairs set), a model name or reference, a config. Out: a small summary
with the new model's reference, never a model or tensors, so a GPU worker can run the task and any other
process can pick up from the registry.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime

from pixelmill.models.device import pick_device
from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.model_tasks import source_ref
from pixelmill.tasks.training.config import TrainConfig
from pixelmill.tasks.training.loop import TrainHooks, load_state, train_model
from pixelmill.tasks.training.objectives import build_objective, objective_class


def train_and_register(workspace: str, source: str, name: str, cfg: TrainConfig, resume: bool = False,
                       on_validation: Callable[[dict], None] = lambda metrics: None,
                       on_start: Callable[[str], None] = lambda text: None) -> dict:
    """Train cfg's objective on `source`, checkpointing to the workspace; register the model; summarize."""
    layout = Layout.of(workspace)
    objective = build_objective(cfg, workspace, source)
    on_start(objective.describe())
    checkpoint = layout.checkpoint(name)
    state = load_state(storage.read_bytes(checkpoint)) if resume else None
    hooks = TrainHooks(on_validation, lambda data: storage.write_bytes(checkpoint, data))
    cache_dir = None if layout.is_local else os.path.join(tempfile.gettempdir(), "pixelmill-cache", source)
    result = train_model(objective, cfg, hooks, resume=state, cache_dir=cache_dir)
    last = result.history[-1] if result.history else {}
    metadata = {"source": source_ref(cfg.task, source)} | objective.registry_metadata() | {
        "steps": result.step, "seconds": round(result.seconds, 1), "metrics": last}
    card = registry.save(workspace, name, result.model,
                         config=objective.registry_config() | {"train_config": cfg.model_dump(mode="json")},
                         metadata=metadata)
    return {"model": card.ref, "uri": card.uri, "steps": result.step, "seconds": result.seconds,
            "images_per_s": result.images_per_s, **objective.registry_config(), "baseline": objective.baseline,
            "metrics": last, "history": result.history}


def evaluation_id(model_ref: str, source: str, split: str, tta: bool = False) -> str:
    return hashlib.sha256(f"{model_ref}|{source}|{split}{'|tta' if tta else ''}".encode()).hexdigest()[:16]


def evaluate_registered(workspace: str, ref: str, source: str, split: str = "valid", gallery: int = 0,
                        limit: int | None = None, record: bool = True, tta: bool = False) -> dict:
    """Score a registered model and its baseline on a split; rows to the `evaluations` table when `record`,
    gallery images to the workspace's reports folder. Returns means, counts and the gallery's URIs.
    `tta`: score the model's geometric self-ensemble (models/tta.py), a separate evaluation."""
    from pixelmill.tasks.core.reports import png_bytes

    card = registry.resolve(workspace, ref)
    objective = objective_class(card.task)
    model = registry.load_weights(card)
    if tta:
        from pixelmill.models.tta import SelfEnsemble

        model = SelfEnsemble(model)
    ev = objective.evaluate_split(model, card, workspace, source, split, pick_device(), gallery, limit)
    eid = evaluation_id(card.ref, source, split, tta)
    if record:
        common = {"evaluation_id": eid, "model": card.ref, "source": source_ref(card.task, source), "split": split,
                  "created_at": datetime.now(UTC)}
        rows = [common | {"scope": "image", "images": 1} | r for r in ev.rows]
        rows += [common | m | {"method": method, "scope": "mean"} for method, m in ev.means.items()]
        Catalog(workspace).write_part("evaluations", card.name, eid, rows)
    report = Layout.of(workspace).report("evaluate", eid)
    uris = []
    for i, images in enumerate(ev.gallery):
        uris.append([storage.join(report, f"{i:03d}-{label.replace(' ', '-')}.png")
                     for label in objective.gallery_labels])
        for uri, image in zip(uris[-1], images, strict=True):
            storage.write_bytes(uri, png_bytes(image))
    return {"model": card.ref, "task": card.task, "evaluation_id": eid, "images": ev.images, "tta": tta,
            "skipped": ev.skipped, "means": ev.means, "score_key": objective.score_key, "baseline": ev.baseline,
            "gallery_labels": list(objective.gallery_labels), "gallery": uris,
            "gallery_captions": [list(c) for c in ev.gallery_captions], "report": ev.report}
