"""plan_apply matches the listing against the catalog in Arrow (`Ledger`) and looks up owners and earlier
outputs for the inputs to do alone: it must plan exactly what the per-input Python loop over the whole history's
dicts planned (the code before issue 18's planners): skip rule, write_failed retries, --force, --limit, collisions
with the catalog's owners, overlays, stale outputs, undecodable names."""

from __future__ import annotations

import posixpath
from datetime import UTC, datetime, timedelta

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixelmill.tasks.core import catalog as catalog_module
from pixelmill.tasks.core import storage
from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.images import IMAGE_EXTENSIONS
from pixelmill.tasks.core.model_tasks import model_task
from pixelmill.tasks.core.names import storable
from pixelmill.tasks.inference import plan as plan_module
from pixelmill.tasks.inference.plan import (
    ApplyConfig,
    ApplyItem,
    is_done,
    name_outputs,
    output_extension,
    output_history,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
IN, OUT = "memory://in", storage.normalize_url("memory://out/x", archives=False)  # as plan_apply spells it
RELS = ["a.jpg", "A.jpg", "a.tif", "a.overlay.jpg", "d/b.png", "é.jpg", "e\u0301.jpg", "notes.txt", "bad\udcff.jpg"]
OUTPUTS = ["a.png", "A.png", "a.overlay.png", "d/b.png", "é.png", "a-0123456789.png", "a.jpg"]


def python_plan(catalog: Catalog, card: ModelCard, items: list[ApplyItem], output: str, cfg: ApplyConfig) -> dict:
    """plan_apply as the per-input loop over `output_history`'s dicts computed it."""
    history = output_history(catalog, card, output)
    done = {} if cfg.force else history.done
    counts = {"skipped": 0, "other_files": 0, "limited": 0}
    todo = []
    for item in items:
        if posixpath.splitext(item.rel)[1].lower() not in IMAGE_EXTENSIONS:
            counts["other_files"] += 1
        elif is_done(item, done.get(storable(item.uri))):
            counts["skipped"] += 1
        elif cfg.limit is not None and len(todo) >= cfg.limit:
            counts["limited"] += 1
        else:
            todo.append(item)
    kind = model_task(card.task).output
    todo = name_outputs(todo, history.owners, history.outputs, output, lambda rel: output_extension(rel, cfg, kind),
                        overlay=cfg.overlay and kind == "mask")
    return counts | {"items": todo}


def arrow_plan(catalog: Catalog, card: ModelCard, source: str, items: list[ApplyItem], cfg: ApplyConfig,
               monkeypatch) -> dict:
    monkeypatch.setattr(plan_module, "input_items", lambda source, catalog: iter(items))
    plan = plan_module.plan_apply(catalog, card, source, OUT, cfg)
    return {"skipped": plan.skipped, "other_files": plan.other_files, "limited": plan.limited,
            "items": [i for s in plan.shards for i in s.items]}


@st.composite
def cases(draw):
    with_sha = draw(st.booleans())  # a data set's inputs carry their content hash; a folder's do not
    items = []
    for rel in draw(st.lists(st.sampled_from(RELS), max_size=8)):
        items.append(ApplyItem(f"{IN}/{rel}", rel, draw(st.integers(1, 2)), draw(st.sampled_from(["v", "w", ""])),
                               draw(st.sampled_from(["s", "t"])) if with_sha else None))
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        rows = []
        for _ in range(draw(st.integers(0, 8))):
            under = draw(st.sampled_from([OUT, OUT + "x", "memory://elsewhere"]))
            rows.append({
                "input_uri": storable(f"{IN}/{draw(st.sampled_from(RELS))}"),
                "input_bytes": draw(st.sampled_from([1, 2, None])),
                "input_version": draw(st.sampled_from(["v", "w", "", None])),
                "input_sha256": draw(st.sampled_from(["s", "t", None])),
                "output_root": draw(st.sampled_from([OUT, OUT, "memory://elsewhere"])), "model": "m",
                "model_version": draw(st.sampled_from(["v1", "v1", "v2"])),
                "output_uri": draw(st.one_of(st.none(), st.sampled_from(OUTPUTS).map(f"{under}/{{}}".format))),
                "overlay_uri": draw(st.one_of(st.none(), st.sampled_from(OUTPUTS).map(f"{OUT}/{{}}".format))),
                "status": draw(st.sampled_from(["ok", "ok", "error"])),
                "error": draw(st.sampled_from([None, "write_failed: x", "corrupt: y"])),
                "created_at": T0 + timedelta(minutes=draw(st.integers(0, 3)))})
        parts.append(rows)
    cfg = ApplyConfig(force=draw(st.booleans()), limit=draw(st.sampled_from([None, 1, 3])),
                      overlay=draw(st.booleans()), format=draw(st.sampled_from(["png", "same"])), shard_size=2)
    return with_sha, items, parts, cfg, draw(st.sampled_from(["restoration", "segmentation"])), \
        draw(st.sampled_from([1, 3, 1000]))


def test_the_arrow_plan_is_the_python_plan(monkeypatch):
    counter = iter(range(10**9))

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(cases())
    def check(case):
        with_sha, items, parts, cfg, task, block = case
        card = ModelCard(name="m", version="v1", uri="memory://m/v1", task=task, arch="unet")
        cat = Catalog(f"memory://pixelmill-test-plan-arrow-{next(counter)}")
        monkeypatch.setattr(catalog_module, "LISTING_BLOCK", block)
        try:
            for i, rows in enumerate(parts):
                if rows:
                    cat.write_part("predictions", "m", f"p{i}", rows)
            source = "images:d" if with_sha else IN  # only a data set's inputs have their sha256 compared
            assert arrow_plan(cat, card, source, items, cfg, monkeypatch) == python_plan(cat, card, items, OUT, cfg)
        finally:
            fs = fsspec.filesystem("memory")
            if fs.exists(cat.workspace.removeprefix("memory://")):
                fs.rm(cat.workspace.removeprefix("memory://"), recursive=True)

    check()


def test_inputs_with_undecodable_names_come_back_as_they_were_listed(monkeypatch):
    card = ModelCard(name="m", version="v1", uri="memory://m/v1", task="restoration", arch="unet")
    items = [ApplyItem(f"{IN}/bad\udcff.jpg", "bad\udcff.jpg", 1, "v"), ApplyItem(f"{IN}/ok.jpg", "ok.jpg", 1, "v")]
    cat = Catalog("memory://pixelmill-test-plan-arrow-names")
    got = arrow_plan(cat, card, IN, items, ApplyConfig(), monkeypatch)["items"]
    assert [i.uri for i in got] == [i.uri for i in items]  # the surrogates kept: the reader opens the real file
    assert got[0].output_rel == "bad\udcff.png" or "\udcff" not in got[0].output_rel


@pytest.mark.parametrize("force", [False, True])
def test_a_data_set_input_done_under_another_version_string_is_done_by_its_content(monkeypatch, force):
    card = ModelCard(name="m", version="v1", uri="memory://m/v1", task="restoration", arch="unet")
    cat = Catalog(f"memory://pixelmill-test-plan-arrow-sha-{force}")
    cat.write_part("predictions", "m", "p", [{"input_uri": f"{IN}/a.jpg", "input_bytes": 9, "input_version": "old",
                                             "input_sha256": "s", "output_root": OUT, "model": "m",
                                             "model_version": "v1", "output_uri": f"{OUT}/a.png", "status": "ok",
                                             "created_at": T0}])
    items = [ApplyItem(f"{IN}/a.jpg", "a.jpg", 1, "new", "s")]
    got = arrow_plan(cat, card, "images:d", items, ApplyConfig(force=force), monkeypatch)
    assert (got["skipped"], len(got["items"])) == ((0, 1) if force else (1, 0))
    assert got == python_plan(cat, card, items, OUT, ApplyConfig(force=force))
