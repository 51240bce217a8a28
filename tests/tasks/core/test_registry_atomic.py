"""An atomic registry (issue 18): many writers at once, in separate processes, on local storage and on S3.

- versions are claimed exclusively: N trainings of one name at once get v1..vN, each folder whole and its own;
- aliases move by compare-and-swap: of M moves from one expected version exactly one wins, the others are
  refused with AliasMoved; moves of different aliases at once are all kept;
- `evaluate --promote` re-checks: an alias moved while the model was being scored refuses the promotion.

Processes start together on a multiprocessing.Barrier (spawn context: a fresh interpreter, as on another
machine), never on sleeps.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import threading

import pytest

from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.layout import Layout

SAVERS = 6
MOVERS = 6


def _tiny_model(offset: float):
    """The bicubic arch (a 3x3 colour matrix and a bias): weights that say which writer saved them."""
    import torch

    from pixelmill.models.factory import build_model

    model = build_model({"arch": "bicubic", "scale": 1})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(offset)
    return model


def _weights_offset(model) -> float:
    import torch

    with torch.no_grad():
        p, base = next(model.parameters()), next(_tiny_model(0.0).parameters())
        return float(torch.round((p - base).mean() * 1000) / 1000)


def _run_all(target, args_of, count: int) -> list:
    """Run target(barrier, queue, *args_of(i)) in `count` spawned processes at once; their answers."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(count), ctx.Queue()
    procs = [ctx.Process(target=target, args=(barrier, queue, *args_of(i))) for i in range(count)]
    for p in procs:
        p.start()
    answers = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, f"a writer process failed (exit {p.exitcode})"
    return answers


def _save_worker(barrier, queue, workspace: str, index: int) -> None:
    model = _tiny_model(index + 1)
    barrier.wait(timeout=120)
    try:
        card = registry.save(workspace, "race", model, {"task": "restoration"},
                             {"source": "pairs:x", "metrics": {"writer": index}})
        queue.put((index, card.version))
    except BaseException as exc:  # noqa: BLE001  (the parent reports it)
        queue.put((index, f"{type(exc).__name__}: {exc}"))


def _claim_worker(barrier, queue, workspace: str, index: int) -> None:
    barrier.wait(timeout=120)
    queue.put(registry.claim_version(workspace, "race"))


def _move_worker(barrier, queue, workspace: str, version: str, expected) -> None:
    card = registry.resolve(workspace, f"race:{version}")
    barrier.wait(timeout=120)
    try:
        registry.set_alias(workspace, card, "production", reason=f"writer {version}", expected=expected)
        queue.put((version, "won"))
    except registry.AliasMoved as exc:
        queue.put((version, str(exc)))


def _tag_worker(barrier, queue, workspace: str, index: int) -> None:
    card = registry.resolve(workspace, "race:v1")
    barrier.wait(timeout=120)
    registry.set_alias(workspace, card, f"tag{index}")
    queue.put(index)


def check_concurrent_saves(workspace: str) -> None:
    answers = dict(_run_all(_save_worker, lambda i: (workspace, i), SAVERS))
    versions = sorted(answers.values(), key=lambda v: int(v[1:]) if v[1:].isdigit() else -1)
    assert versions == [f"v{n}" for n in range(1, SAVERS + 1)], answers
    assert registry.versions(workspace, "race") == versions
    for index, version in answers.items():
        card = registry.resolve(workspace, f"race:{version}")
        assert card.metrics == {"writer": index}, f"{version}'s metadata is another writer's"
        model = registry.load_weights(card)  # the weights match metadata.json's sha256
        assert _weights_offset(model) == index + 1, f"{version}'s weights are another writer's"
        claim = json.loads(storage.read_bytes(storage.join(card.uri, registry.CLAIM)))
        assert claim["token"] and claim["by"]
    assert len({registry.resolve(workspace, f"race:{v}").weights_sha256 for v in versions}) == SAVERS


def check_concurrent_moves(workspace: str) -> None:
    model = _tiny_model(0.0)
    for _ in range(MOVERS + 1):
        registry.save(workspace, "race", model, {"task": "restoration"}, {"source": "pairs:x"})
    registry.set_alias(workspace, registry.resolve(workspace, "race:v1"), "production")
    targets = [f"v{n}" for n in range(2, MOVERS + 2)]
    answers = dict(_run_all(_move_worker, lambda i: (workspace, targets[i], "v1"), MOVERS))
    winners = [v for v, a in answers.items() if a == "won"]
    assert len(winners) == 1, answers
    (winner,) = winners
    assert registry.aliases(workspace, "race") == {"production": winner}
    for version, answer in answers.items():
        if version != winner:  # says where it points now and, when the record is there, who moved it
            assert f"race@production points at {winner} now, not v1" in answer, answer
    history = registry.promotions(workspace, "race")
    assert [(p["version"], p["previous"], p["reason"]) for p in history] == [
        ("v1", None, None), (winner, "v1", f"writer {winner}")]

    # moves of different aliases at once: none is lost to another's read-modify-write
    _run_all(_tag_worker, lambda i: (workspace, i), MOVERS)
    assert registry.aliases(workspace, "race") == {"production": winner} | {f"tag{i}": "v1" for i in range(MOVERS)}


# ---------------------------------------------------------------- local


def test_concurrent_claims_take_distinct_versions(tmp_path):
    """The fast half of the save race (no torch in the writers): claims alone."""
    ws = str(tmp_path / "ws")
    got = _run_all(_claim_worker, lambda i: (ws, i), SAVERS)
    assert sorted(got, key=lambda v: int(v[1:])) == [f"v{n}" for n in range(1, SAVERS + 1)]


@pytest.mark.slow
def test_concurrent_saves_take_distinct_versions(tmp_path):
    """Six trainings of one name at once (each process imports torch: ~15 s on two cores)."""
    check_concurrent_saves(str(tmp_path / "ws"))


def test_concurrent_alias_moves_one_wins(tmp_path):
    check_concurrent_moves(str(tmp_path / "ws"))


def test_save_skips_claimed_and_abandoned_folders(tmp_path):
    ws = str(tmp_path / "ws")
    model = _tiny_model(0.0)
    assert registry.claim_version(ws, "m") == "v1"  # a save that died after its claim
    storage.write_bytes(storage.join(Layout.of(ws).model("m"), "v2", "weights.safetensors"), b"half")  # older code
    card = registry.save(ws, "m", model, {"task": "restoration"}, {"source": "pairs:x"})
    assert card.version == "v3" and registry.versions(ws, "m") == ["v3"]
    assert registry.resolve(ws, "m").version == "v3"


def test_alias_compare_and_swap(tmp_path):
    ws = str(tmp_path / "ws")
    model = _tiny_model(0.0)
    v1, v2, v3 = (registry.save(ws, "m", model, {"task": "restoration"}, {"source": "pairs:x"}) for _ in range(3))
    with pytest.raises(registry.AliasMoved, match="points at nothing now, not v1"):
        registry.set_alias(ws, v2, "production", expected="v1")
    assert registry.set_alias(ws, v1, "production", expected=None) is None  # None: "not set yet"
    seen = registry.aliases(ws, "m")["production"]  # an evaluation starts scoring v3 against v1 ...
    registry.set_alias(ws, v2, "production", reason="won by 0.3 dB", by="evaluate run brave-otter")  # ... meanwhile
    with pytest.raises(registry.AliasMoved) as refused:
        registry.set_alias(ws, v3, "production", expected=seen)
    assert "m@production points at v2 now, not v1" in refused.value.message
    assert "moved there by evaluate run brave-otter" in refused.value.message and "won by 0.3 dB" in refused.value.message
    assert registry.aliases(ws, "m") == {"production": "v2"}
    assert registry.set_alias(ws, v3, "production", expected="v2") == "v2"
    assert registry.set_alias(ws, v3, "production") == "v3"  # ANY, and no change: no record
    assert [p["version"] for p in registry.promotions(ws, "m")] == ["v1", "v2", "v3"]


def test_memory_saves_from_threads(memory_url):
    model = _tiny_model(0.0)
    barrier = threading.Barrier(4)
    got: list[str] = []

    def save() -> None:
        barrier.wait(timeout=30)
        got.append(registry.save(memory_url, "m", model, {"task": "restoration"}, {"source": "pairs:x"}).version)

    threads = [threading.Thread(target=save) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == ["v1", "v2", "v3", "v4"]
    registry.set_alias(memory_url, registry.resolve(memory_url, "m:v1"), "production", expected=None)
    with pytest.raises(registry.AliasMoved):
        registry.set_alias(memory_url, registry.resolve(memory_url, "m:v2"), "production", expected=None)


def test_evaluate_refuses_a_promotion_that_raced(tmp_path, monkeypatch):
    """The alias is read when scoring begins; another promotion lands while scoring; the write is refused."""
    import logging

    flow_module = importlib.import_module("pixelmill.flows.evaluate")
    ws = str(tmp_path / "ws")
    model = _tiny_model(0.0)
    v1, v2, v3 = (registry.save(ws, "m", model, {"task": "restoration"}, {"source": "pairs:x"}) for _ in range(3))
    registry.set_alias(ws, v1, "production")
    scores = {"m:v1": 20.0, "m:v2": 21.0, "m:v3": 30.0}
    race = {"on": True}

    def evaluate_model(workspace, ref, source, split, gallery=0, tta=False):
        if race["on"] and ref == "m:v3":  # while v3 is scored, another run promotes v2
            registry.set_alias(workspace, v2, "production", reason="v2 won its evaluation", by="run other-run")
        means = {"model": {"psnr_y": scores[ref], "images": 2}, "baseline": {"psnr_y": 10.0, "images": 2}}
        return {"score_key": "psnr_y", "means": means, "images": 2, "skipped": 0, "baseline": "bicubic",
                "report": "", "gallery": []}

    monkeypatch.setattr(flow_module.steps, "evaluate_model", evaluate_model)
    monkeypatch.setattr(flow_module, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(flow_module, "create_markdown_artifact", lambda *a, **k: None)
    monkeypatch.setattr(flow_module, "evaluation_gallery", lambda result: "")
    monkeypatch.setattr(flow_module, "emit_promoted", lambda *a, **k: None)

    refused = flow_module.evaluate.fn("m:v3", "pairs", promote="production", workspace=ws)
    assert refused["promoted"] is False
    assert refused["promotion_reason"].startswith("not promoted: another promotion won the race")
    assert "m@production points at v2 now, not v1" in refused["promotion_reason"]
    assert "run other-run" in refused["promotion_reason"]
    assert registry.aliases(ws, "m") == {"production": "v2"}

    race["on"] = False  # evaluated again, against v2 this time, with nobody racing: it wins
    won = flow_module.evaluate.fn("m:v3", "pairs", promote="production", workspace=ws)
    assert won["promoted"] is True and registry.aliases(ws, "m") == {"production": "v3"}
    assert registry.promotions(ws, "m")[-1]["reason"] == won["promotion_reason"]


def test_cli_promote_expect(tmp_path):
    from typer.testing import CliRunner

    from pixelmill.flows.cli import app

    ws = str(tmp_path / "ws")
    model = _tiny_model(0.0)
    for _ in range(2):
        registry.save(ws, "m", model, {"task": "restoration"}, {"source": "pairs:x"})
    runner = CliRunner()
    ok = runner.invoke(app, ["models", "promote", "m:v1", "production", "--expect", "none", "--workspace", ws])
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(app, ["models", "promote", "m:v2", "production", "--expect", "none", "--workspace", ws])
    assert refused.exit_code == 1 and "points at v1 now, not nothing" in refused.output
    plain = runner.invoke(app, ["models", "promote", "m:v2", "production", "--workspace", ws])  # unconditional
    assert plain.exit_code == 0 and registry.aliases(ws, "m") == {"production": "v2"}


# ---------------------------------------------------------------- S3 (SeaweedFS)


@pytest.mark.s3
@pytest.mark.slow
def test_s3_concurrent_saves_take_distinct_versions(s3_bucket):
    check_concurrent_saves(f"s3://{s3_bucket}/ws")


@pytest.mark.s3
def test_s3_concurrent_alias_moves_one_wins(s3_bucket):
    check_concurrent_moves(f"s3://{s3_bucket}/ws")


@pytest.mark.s3
def test_s3_conditional_writes(s3_bucket):
    """The server honours If-None-Match: * and If-Match (SeaweedFS >= 4 does); the helpers rely on both."""
    uri = f"s3://{s3_bucket}/cond/claim"
    assert storage.create_exclusive(uri, b"first") is True
    assert storage.create_exclusive(uri, b"second") is False
    assert storage.read_bytes(uri) == b"first"
    counter = f"s3://{s3_bucket}/cond/counter"
    assert storage.update_bytes(counter, lambda raw: b"1") is None
    assert storage.update_bytes(counter, lambda raw: str(int(raw) + 1).encode()) == b"1"
    assert storage.read_bytes(counter) == b"2"
    fs, path = storage.resolve(counter)
    bucket, key, _ = fs.split_path(path)
    with pytest.raises(OSError) as stale:  # a PUT against an old ETag is refused by the server itself
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"9", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert storage._condition_answer(stale.value) == "failed"
