"""Lineage without Prefect, on a small real workspace: ingest -> crappify sr-x2 -> train a few steps -> evaluate ->
promote -> apply, each by the stages' own pure functions; then walks back from the outputs, a copy of one, an
ingested image and a pair file, and forward from the model. Promotion history as set_alias records it.

Two workspaces: `recorded` holds predictions rows written through the catalog's own API (outputs, checks and flags
chosen by the test, so the checks and review are exact); `applied` ran the real apply."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from pixelmill.tasks.core import lineage, registry, storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.core.layout import Layout
from tests.helpers import crappify_local, ingest_local, noise_png, texture_png

SET = "d-sr-x2"
FLAGGED = "colour drift 9.1 > 6 (CIEDE2000 p95)"


@dataclass(frozen=True)
class Built:
    root: Path
    ws: str
    src: Path
    out: Path
    model: str  # NAME:vN

    def output(self, name: str) -> Path:
        return self.out / name


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; two OpenMP threads on a busy 2-core machine are far slower
    yield
    torch.set_num_threads(n)


def build_trained(root: Path) -> Built:
    """Six texture photos ingested as data set `d`, an sr-x2 paired set, `sr:v1` trained on it for 2 steps,
    evaluated and promoted to @production (by the same functions the flows call, minus Prefect)."""
    from pixelmill.tasks.training.config import TrainConfig
    from pixelmill.tasks.training.runs import evaluate_registered, train_and_register

    src, ws = root / "src", str(root / "ws")
    for i in range(6):
        storage.write_bytes(str(src / f"t{i}.png"), texture_png(i, 48))
    ingest_local(str(src), ws, split_fractions=(0.67, 0.33, 0.0))
    crappify_local(ws, recipe="sr-x2")
    cfg = TrainConfig(arch="unet-plain", arch_kwargs={"base": 8, "depth": 2}, batch_size=2, crop=16, val_crop=16,
                      steps=2, val_every=2, loader_workers=0, device="cpu")
    ref = train_and_register(ws, SET, "sr", cfg)["model"]
    evaluate_registered(ws, ref, SET, "valid")
    registry.set_alias(ws, registry.resolve(ws, ref), "production", reason="beats bicubic")
    return Built(root, ws, src, root / "out", ref)


def record_outputs(built: Built, run_id: str = "run-1", flagged: tuple[int, ...] = (1,)) -> list[dict]:
    """What apply writes for each ingested image (a file under out/, a predictions row with its sha256, checks and
    flags), through the catalog's own write API; outputs[flagged] are flagged."""
    images = sorted(Catalog(built.ws).read("images").to_pylist(), key=lambda r: r["uri"])
    now, rows = datetime.now(UTC), []
    for i, image in enumerate(images):
        data = noise_png(96, 96, seed=100 + i)
        uri = storage.normalize_url(str(built.output(Path(image["uri"]).name)))
        storage.write_bytes(uri, data)
        rows.append({"input_uri": image["uri"], "input_sha256": image["sha256"], "input_bytes": image["bytes"],
                     "output_root": storage.normalize_url(str(built.out)), "output_uri": uri,
                     "output_sha256": hashlib.sha256(data).hexdigest(), "model": "sr", "model_version": "v1",
                     "task": "restoration", "input_width": 48, "input_height": 48, "output_width": 96,
                     "output_height": 96, "tiles": 1, "status": "ok", "drift_mean": 1.5 + i, "drift_p95": 3.0 + i,
                     "niqe_input": 4.0, "niqe_output": 4.5, "clipped": 0.001, "flag": i in flagged,
                     "flag_reason": FLAGGED if i in flagged else None, "seconds": 0.01, "run_id": run_id,
                     "created_at": now + timedelta(milliseconds=i)})
    rows.append({"input_uri": storage.normalize_url(str(built.src / "broken.jpg")), "output_root": rows[0]["output_root"],
                 "model": "sr", "model_version": "v1", "task": "restoration", "status": "error",
                 "error": "corrupt: cannot identify image file", "run_id": run_id, "created_at": now})
    Catalog(built.ws).write_part("predictions", "sr", run_id, rows)
    return rows


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Built:
    built = build_trained(tmp_path_factory.mktemp("lineage"))
    record_outputs(built)
    return built


@pytest.fixture(scope="module")
def applied(tmp_path_factory) -> Built:
    """The same workspace, and the real apply of sr@production over the ingested photos (run id run-a)."""
    from pixelmill.tasks.inference.apply import ApplyConfig, apply_local

    built = build_trained(tmp_path_factory.mktemp("applied"))
    apply_local(built.ws, "sr@production", str(built.src), str(built.out), ApplyConfig(tile=64, overlap=8),
                run_id="run-a")
    return built


def images_table(ws: str) -> dict[str, str]:
    return {r["uri"]: r["sha256"] for r in Catalog(ws).read("images", columns=["uri", "sha256"]).to_pylist()}


def assert_reaches_the_sources(found: dict, built: Built) -> None:
    """The chain from an output: the model version, its paired set and recipe hash, and original images whose
    sha256 is the images table's."""
    card = registry.resolve(built.ws, built.model)
    model, training = found["model"], found["training"]
    assert model["ref"] == built.model == "sr:v1" and not model["missing"]
    assert model["weights_sha256"] == card.weights_sha256 and model["aliases"] == ["production"]
    assert model["source"] == f"pairs:{SET}" and model["recipe_hash"] == card.recipe_hash
    assert [p["alias"] for p in model["promotions"]] == ["production"]
    assert {e["method"] for e in model["evaluations"]} == {"model", "baseline"}
    assert training["source"] == f"pairs:{SET}" and training["found"] and training["count"] == 6
    assert training["recipes"] == ["sr-x2"] and training["recipe_hashes"] == [card.recipe_hash]
    assert training["recipe_hash_matches"] is True
    assert [d["name"] for d in training["datasets"]] == ["d"] and training["datasets"][0]["images"] == 6
    catalogued = images_table(built.ws)
    assert len(training["examples"]) == lineage.EXAMPLES
    for pair in training["examples"]:
        assert catalogued[pair["image_uri"]] == pair["image_sha256"] and pair["image_sha256_matches"]
        assert pair["params"]["recipe_hash"] == card.recipe_hash and pair["split"] == "train"
        # sr-x2 only crops: the HR target is the source image itself, its crop recorded; the LR is the set's file
        assert pair["hr_uri"] == pair["image_uri"] and pair["hr_kind"] == "source" and pair["hr_sha256"]
        assert pair["lr_uri"].startswith(storage.normalize_url(built.ws))
    assert found["warnings"] == []
    json.dumps(found)  # JSON-able as it is


# ---------------------------------------------------------------- walking back from a file


def test_lineage_of_an_output_reaches_the_model_its_pairs_and_the_source_images(recorded, monkeypatch):
    monkeypatch.chdir(recorded.out)
    found = lineage.lineage_of_file(recorded.ws, "t1.png")  # relative to the current directory
    assert found["kind"] == "file" and found["target"]["role"] == "output"
    assert found["target"]["matched_by"] == "output_uri"
    assert found["target"]["uri"] == storage.normalize_url(str(recorded.output("t1.png")))
    p = found["prediction"]
    assert p["input_uri"] == storage.normalize_url(str(recorded.src / "t1.png")) and p["run_id"] == "run-1"
    assert p["flag"] is True and p["flag_reason"] == FLAGGED and p["drift_p95"] == 4.0
    assert found["input_image"]["dataset"] == "d" and found["input_image"]["sha256"] == p["input_sha256"]
    assert found["input_image"]["matched_by"] == "uri"
    assert found["image"] is None and found["pair"] is None
    assert_reaches_the_sources(found, recorded)

    text = lineage.render(found)
    for shown in ("sr:v1", "@production", f"pairs:{SET}", found["model"]["recipe_hash"], "beats bicubic",
                  f"FLAGGED: {FLAGGED}", "images:d", p["input_uri"], *(e["image_uri"] for e in
                                                                       found["training"]["examples"])):
        assert shown in text, shown
    assert text.index("run-1") < text.index("model sr:v1") < text.index(f"trained on pairs:{SET}")


def test_a_copy_of_an_output_is_found_by_its_sha256(recorded, tmp_path):
    copy = tmp_path / "elsewhere" / "renamed.png"
    copy.parent.mkdir()
    shutil.copy(recorded.output("t2.png"), copy)
    found = lineage.lineage_of_file(recorded.ws, str(copy))
    assert found["target"]["matched_by"] == "output_sha256" and found["target"]["role"] == "output"
    assert found["prediction"]["output_uri"] == storage.normalize_url(str(recorded.output("t2.png")))
    assert found["model"]["ref"] == "sr:v1"
    assert "found by output_sha256" in lineage.render(found)


def test_a_changed_or_deleted_output_is_still_found_by_name_with_a_warning(recorded):
    changed = lineage.lineage_of_file(recorded.ws, storage.normalize_url(str(recorded.output("t3.png"))))
    assert changed["warnings"] == []
    data = recorded.output("t3.png").read_bytes()
    try:
        recorded.output("t3.png").write_bytes(noise_png(8, 8, seed=9))
        changed = lineage.lineage_of_file(recorded.ws, str(recorded.output("t3.png")))
        assert changed["prediction"] and "changed or replaced" in changed["warnings"][0]
        recorded.output("t3.png").unlink()
        gone = lineage.lineage_of_file(recorded.ws, str(recorded.output("t3.png")))
        assert gone["target"]["sha256"] is None and gone["model"]["ref"] == "sr:v1"
        assert "no file at" in gone["warnings"][0]
    finally:
        recorded.output("t3.png").write_bytes(data)


def test_lineage_of_an_ingested_image_and_of_a_pair_file(recorded, tmp_path):
    uri = storage.normalize_url(str(recorded.src / "t0.png"))
    found = lineage.lineage_of_file(recorded.ws, str(recorded.src / "t0.png"))
    assert found["target"] == found["target"] | {"role": "image", "matched_by": "uri"}
    assert found["image"]["uri"] == uri and found["image"]["sha256"] == images_table(recorded.ws)[uri]
    assert found["used_by"]["pair_sets"][0]["set_name"] == SET and found["used_by"]["models"] == ["sr:v1"]
    assert found["used_by"]["outputs"]["count"] == 1 and found["prediction"] is None
    shutil.copy(recorded.src / "t0.png", tmp_path / "same.png")  # the same photo elsewhere: by its content
    assert lineage.lineage_of_file(recorded.ws, str(tmp_path / "same.png"))["target"]["matched_by"] == "sha256"

    pair = Catalog(recorded.ws).read("pairs", SET).to_pylist()[0]
    found = lineage.lineage_of_file(recorded.ws, pair["lr_uri"])
    assert found["target"]["role"] == "pair_lr" and found["pair"]["pair_id"] == pair["pair_id"]
    assert found["pair"]["params"] == json.loads(pair["params"]) and found["pair"]["set"]["count"] == 6
    assert found["input_image"]["uri"] == pair["image_uri"] and found["used_by"]["models"] == ["sr:v1"]
    assert f"pair {pair['pair_id']} of pairs:{SET}" in lineage.render(found)
    assert f"hr target: {pair['image_uri']} (the source itself" in lineage.render(found)


def test_an_unknown_file_is_a_clear_error(recorded, tmp_path):
    stranger = tmp_path / "stranger.png"
    stranger.write_bytes(noise_png(20, 20, seed=77))
    with pytest.raises(PixelmillError, match="is not an output or cataloged file of workspace") as err:
        lineage.lineage_of_file(recorded.ws, str(stranger))
    assert "file exists" in err.value.message and "--workspace" in err.value.hint
    with pytest.raises(PixelmillError, match="there is no file there"):
        lineage.lineage_of_file(recorded.ws, str(tmp_path / "missing.png"))


def with_provenance(path: Path, provenance: dict[str, str], seed: int) -> None:
    """A PNG carrying pixelmill's provenance as `pixelmill:KEY` text chunks (tasks/core/metadata.py reads them)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in provenance.items():
        info.add_text(f"pixelmill:{key}", value)
    with Image.open(io.BytesIO(noise_png(30, 30, seed=seed))) as im:
        im.save(path, "PNG", pnginfo=info)


def test_a_file_found_by_its_own_provenance(recorded, tmp_path):
    reencoded = tmp_path / "t4-small.png"  # re-encoded elsewhere: neither its name nor its bytes are cataloged
    input_uri = storage.normalize_url(str(recorded.src / "t4.png"))
    card = registry.resolve(recorded.ws, "sr:v1")
    with_provenance(reencoded, {"model": "sr", "model_version": "v1", "weights_sha256": card.weights_sha256,
                                "input_uri": input_uri, "input_sha256": "0" * 64, "run_id": "run-1",
                                "pixelmill_version": "0.1.0"}, seed=4)
    found = lineage.lineage_of_file(recorded.ws, str(reencoded))
    assert found["target"]["matched_by"] == "provenance" and found["prediction"]["input_uri"] == input_uri
    assert found["provenance"]["run_id"] == "run-1" and found["model"]["ref"] == "sr:v1"
    assert len(found["warnings"]) == 1 and "re-encoded copy of" in found["warnings"][0]

    elsewhere = tmp_path / "from-another-run.png"
    with_provenance(elsewhere, {"model": "sr", "model_version": "v1", "weights_sha256": "f" * 64,
                                "input_uri": "s3://elsewhere/x.png", "input_sha256": "0" * 64, "run_id": "other"},
                    seed=5)
    found = lineage.lineage_of_file(recorded.ws, str(elsewhere))
    assert found["target"]["role"] == "provenance_only" and found["prediction"] is None
    assert found["model"]["ref"] == "sr:v1"
    assert [w.split(" ")[:3] for w in found["warnings"]] == [["no", "predictions", "row"], ["the", "file", "says"]]
    assert "its metadata says: sr:v1 on s3://elsewhere/x.png" in lineage.render(found)


# ---------------------------------------------------------------- forward from a model, and review


def test_lineage_of_a_model_counts_what_it_made_by_run(recorded):
    found = lineage.lineage_of_model(recorded.ws, "sr@production")
    assert found["kind"] == "model" and found["model"]["ref"] == "sr:v1" and found["training"]["count"] == 6
    outputs = found["outputs"]
    assert (outputs["total"], outputs["ok"], outputs["error"], outputs["flagged"]) == (7, 6, 1, 1)
    [run] = outputs["runs"]
    assert run | {"first": None, "last": None} == {
        "output_root": storage.normalize_url(str(recorded.out)), "run_id": "run-1", "rows": 7, "ok": 6, "error": 1,
        "flagged": 1, "first": None, "last": None}
    assert run["first"] <= run["last"] and len(outputs["examples"]) == lineage.EXAMPLES
    text = lineage.render(found)
    assert "run run-1 -> " in text and "7 (6 ok, 1 error, 1 flagged)" in text
    json.dumps(found)
    with pytest.raises(PixelmillError, match="has no alias 'staging'"):
        lineage.lineage_of_model(recorded.ws, "sr@staging")


def test_review_lists_the_flagged_outputs_of_a_run(recorded):
    review = lineage.review_run(recorded.ws, "run-1")
    assert (review["outputs"], review["errors"], review["flagged"]) == (7, 1, 1)
    [row] = review["rows"]
    assert row["input_uri"].endswith("/t1.png") and row["output_uri"].endswith("/out/t1.png")
    assert row["model"] == "sr:v1" and row["flag_reason"] == FLAGGED and row["niqe_output"] == 4.5
    text = lineage.render_review(review)
    assert text.splitlines()[0] == "run run-1: 1 of 7 outputs flagged (1 failed)" and FLAGGED in text
    with pytest.raises(PixelmillError, match="no outputs of run 'nope'") as err:
        lineage.review_run(recorded.ws, "nope")
    assert "run-1" in err.value.hint


def test_a_hundred_thousand_predictions_answer_in_seconds(tmp_path):
    import time

    import pyarrow as pa
    import pyarrow.compute as pc

    from pixelmill.tasks.core.catalog import PREDICTIONS

    ws, n, parts = str(tmp_path / "ws"), 100_000, 10
    size = n // parts
    for k in range(parts):  # ten runs' parts of 10,000 rows, every hundredth row flagged
        names = pc.utf8_slice_codeunits(pc.cast(pa.array(range(10**6 + k * size, 10**6 + (k + 1) * size)),
                                                pa.string()), 1)  # 000000 .. 099999
        columns = {"input_uri": pc.binary_join_element_wise("file:///in/", names, ".png", ""),
                   "output_root": ["file:///out"] * size,
                   "output_uri": pc.binary_join_element_wise("file:///out/", names, ".png", ""),
                   "model": ["big"] * size, "model_version": ["v1"] * size, "status": ["ok"] * size,
                   "flag": [j % 100 == 0 for j in range(size)], "run_id": [f"run-{k}"] * size,
                   "created_at": pa.array([datetime.now(UTC)] * size, pa.timestamp("us", "UTC"))}
        table = pa.table({f.name: columns.get(f.name, pa.nulls(size, f.type)) for f in PREDICTIONS})
        Catalog(ws).write_part("predictions", "big", f"p{k}", table.cast(PREDICTIONS))
    start = time.perf_counter()
    assert lineage.outputs_of(Catalog(ws), "big", "v1")["total"] == n
    assert lineage.review_run(ws, "run-5")["flagged"] == 100
    found = lineage.lineage_of_file(ws, "file:///out/054321.png")
    assert found["prediction"]["run_id"] == "run-5" and found["model"]["missing"]  # no model folder: still shown
    assert time.perf_counter() - start < 10


# ---------------------------------------------------------------- promotions


def test_set_alias_keeps_a_history_of_promotions(tmp_path):
    from pixelmill.models.factory import build_model

    ws = str(tmp_path / "ws")
    model = build_model({"arch": "unet-plain", "base": 8, "depth": 2})
    v1, v2 = (registry.save(ws, "m", model, {"task": "restoration"}, {"source": "pairs:x"}) for _ in range(2))
    registry.set_alias(ws, v1, "production")
    registry.set_alias(ws, v1, "production")  # not a change: no record
    registry.set_alias(ws, v2, "production", reason="v2 scores psnr_y 30.1 vs 29.7")
    registry.set_alias(ws, v1, "staging")
    history = registry.promotions(ws, "m")
    assert [(p["alias"], p["version"], p["previous"], p["reason"]) for p in history] == [
        ("production", "v1", None, None), ("production", "v2", "v1", "v2 scores psnr_y 30.1 vs 29.7"),
        ("staging", "v1", None, None)]
    assert [datetime.fromisoformat(p["at"]) for p in history] == sorted(datetime.fromisoformat(p["at"])
                                                                        for p in history)
    assert registry.aliases(ws, "m") == {"production": "v2", "staging": "v1"}
    assert registry.versions(ws, "m") == ["v1", "v2"]  # the history folder is no version
    assert len(storage.list_names(Layout.of(ws).promotions("m"), ".json")) == 3
    v1_history = lineage.model_version(ws, Catalog(ws), "m", "v1")["promotions"]
    assert len(v1_history) == 3  # got production, lost it to v2, got staging
    assert registry.promotions(ws, "nosuch") == []


# ---------------------------------------------------------------- the real apply


def test_lineage_of_a_real_apply_output_and_its_copy(applied, tmp_path):
    rows = Catalog(applied.ws).read("predictions", "sr").to_pylist()
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["output_uri"])
    assert len(ok) == 6 and {r["run_id"] for r in ok} == {"run-a"}
    output = ok[0]["output_uri"]
    found = lineage.lineage_of_file(applied.ws, output)
    assert found["target"]["matched_by"] == "output_uri" and found["prediction"]["input_uri"] == ok[0]["input_uri"]
    assert found["input_image"]["sha256"] == images_table(applied.ws)[ok[0]["input_uri"]]
    assert_reaches_the_sources(found, applied)

    # apply records each output's sha256, so a copy anywhere is found by content
    assert ok[0]["output_sha256"] == hashlib.sha256(storage.read_bytes(output)).hexdigest()
    copy = tmp_path / "copy-of-output"
    copy.write_bytes(storage.read_bytes(output))
    assert lineage.lineage_of_file(applied.ws, str(copy))["prediction"]["output_uri"] == output

    made = lineage.lineage_of_model(applied.ws, "sr")["outputs"]
    assert made["total"] == 6 and [r["run_id"] for r in made["runs"]] == ["run-a"]
    assert lineage.review_run(applied.ws, "run-a")["outputs"] == 6
