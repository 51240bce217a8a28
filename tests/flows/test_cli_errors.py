"""Mistakes are answered before any flow starts: the real `pixelmill` command in its own process, no Prefect server,
exit code 1 and exactly two lines on stderr (`error:` then `hint:`). The wall time of each is printed (`pytest -s`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pixelmill.tasks.core.catalog import Catalog
from tests.flows.test_cli_imports import prefect_env
from tests.helpers import make_image, unexpected_stderr

PIXELMILL = str(Path(sys.executable).parent / "pixelmill")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace with a data set `samples`, a paired set `samples-lesson7` and a model `sr2:v1` on disk."""
    root = tmp_path_factory.mktemp("errors")
    ws = root / "ws"
    catalog = Catalog(str(ws))
    now = datetime.now(UTC)
    catalog.write_part("images", "samples", "a", [{"dataset": "samples", "uri": "file:///x.png", "status": "ok",
                                                   "split": "train", "ingested_at": now}])
    catalog.write_part("pairs", "samples-lesson7", "a", [{"set_name": "samples-lesson7", "pair_id": "p",
                                                          "status": "ok", "created_at": now}])
    version = ws / "models" / "sr2" / "v1"  # what registry.resolve reads: the version's JSON files
    version.mkdir(parents=True)
    (version / "config.json").write_text(json.dumps({"task": "restoration"}))
    (version / "metadata.json").write_text("{}")
    make_image(32, 24).save(root / "photo.png")
    (root / "bad.yaml").write_text("steps:\n  - {op: jpeg, quality: [10, 500]}\n")
    return ws


def run_cli(args: list[str], cwd: Path) -> tuple[int, list[str], list[str], float]:
    # PIXELMILL_LOCAL_PREFECT_URL on a closed port: a mistake must never get as far as looking for a server
    env = prefect_env(cwd / "prefect") | {"PIXELMILL_LOCAL_PREFECT_URL": "http://127.0.0.1:9/api"}
    start = time.perf_counter()
    proc = subprocess.run([PIXELMILL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    # stderr minus known harmless lines (tests/helpers.py HARMLESS_STDERR): exactly `error:` and `hint:` remain
    return proc.returncode, proc.stdout.splitlines(), unexpected_stderr(proc.stderr), time.perf_counter() - start


CASES = [
    (["crappify", "--dataset", "sampels"], "error: unknown data set 'sampels' in {ws}",
     "hint: data sets there: samples"),
    (["crappify", "--dataset", "samples", "--recipe", "lesson8"],
     "error: unknown recipe 'lesson8'; valid names: lesson7, sr-x2, sr-x4, dejpeg, watermark, denoise, colorize, "
     "realistic (or the path of a .yaml recipe file)", "hint: `pixelmill recipes` lists the shipped recipes"),
    (["crappify", "--dataset", "samples", "--recipe", "../bad.yaml"],
     "error: ../bad.yaml: invalid recipe: steps.0.quality.1: Input should be less than or equal to 100",
     "hint: `pixelmill recipes` lists the shipped recipes"),
    (["ingest", "./no/such/dir"], "error: file://{cwd}/no/such/dir does not exist",
     "hint: check the path or bucket name (and AWS_ENDPOINT_URL for S3)"),
    (["ingest", "..", "--split-fractions", "0.8,0.2"],
     "error: --split-fractions 0.8,0.2: give three fractions train,valid,test, each >= 0, that sum to 1",
     "hint: e.g. --split-fractions 0.8,0.1,0.1 (or 0.8,0.2,0 for no test split)"),
    (["train", "restoration", "--pairs", "nosuch-pairs", "--name", "m"],
     "error: unknown paired set 'nosuch-pairs' in {ws}", "hint: paired sets there: samples-lesson7"),
    (["train", "segmentation", "--dataset", "nosuch", "--name", "m"], "error: unknown data set 'nosuch' in {ws}",
     "hint: data sets there: samples"),
    (["train", "restoration", "--pairs", "samples-lesson7", "--name", "m", "--gan-from", "sr3"],
     "error: unknown model 'sr3' in {ws}/models", "hint: known models: sr2; train one with `pixelmill train restoration`"),
    (["evaluate", "sr3", "--pairs", "samples-lesson7"], "error: unknown model 'sr3' in {ws}/models",
     "hint: known models: sr2; train one with `pixelmill train restoration`"),
    (["evaluate", "sr2@prod", "--pairs", "samples-lesson7"], "error: model 'sr2' has no alias 'prod'",
     "hint: aliases: none; set one with `pixelmill models promote sr2:VERSION prod`"),
    (["evaluate", "sr2", "--pairs", "samples-lesson8"], "error: unknown paired set 'samples-lesson8' in {ws}",
     "hint: paired sets there: samples-lesson7"),
    (["enhance", "sr2", "../photo.png", "out.xyz"], "error: out.xyz: unknown output extension .xyz",
     "hint: name it *.png, *.jpg, *.jpeg, *.webp, *.tif, *.tiff"),
    (["enhance", "sr3", "../photo.png", "out.png"], "error: unknown model 'sr3' in {ws}/models",
     "hint: known models: sr2; train one with `pixelmill train restoration`"),
    (["enhance", "sr2", "missing.png", "out.png"], "error: missing.png does not exist",
     "hint: check the URL, bucket name and prefix"),
    (["segment", "sr3", "../photo.png", "out.png"], "error: unknown model 'sr3' in {ws}/models",
     "hint: known models: sr2; train one with `pixelmill train restoration`"),
    (["apply", "sr3", "--input", "..", "--output", "out"], "error: unknown model 'sr3' in {ws}/models",
     "hint: known models: sr2; train one with `pixelmill train restoration`"),
    (["apply", "sr2", "--input", "dataset:sampels", "--output", "out"], "error: unknown data set 'sampels' in {ws}",
     "hint: data sets there: samples"),
    (["catalog", "show", "images", "--dataset", "sampels"], "error: unknown data set 'sampels' in {ws}",
     "hint: data sets there: samples"),
    (["catalog", "show", "pairs", "--pairs", "samples-lesson8"], "error: unknown paired set 'samples-lesson8' in {ws}",
     "hint: paired sets there: samples-lesson7"),
    (["catalog", "show", "pairs", "--model", "sr2"], "error: --model does not apply to the pairs table",
     "hint: pick a paired set with --pairs (`pixelmill catalog show pairs` lists them)"),
    # typed data references: images:NAME or pairs:NAME, and only the kind a command takes
    (["apply", "sr2", "--input", "images:sampels", "--output", "out"], "error: unknown data set 'sampels' in {ws}",
     "hint: data sets there: samples"),
    (["apply", "sr2", "--input", "pairs:samples-lesson7", "--output", "out"],
     "error: 'pairs:samples-lesson7' is a paired set; this takes images:NAME",
     "hint: images:NAME is a data set (`pixelmill catalog show images`)"),
    (["evaluate", "sr2", "--data", "samples-lesson7"],
     "error: 'samples-lesson7' is not a typed data reference; give images:NAME or pairs:NAME",
     "hint: images:NAME is a data set (`pixelmill catalog show images`); pairs:NAME is a paired set "
     "(`pixelmill catalog show pairs`)"),
    (["evaluate", "sr2", "--data", "pairs:samples-lesson8"], "error: unknown paired set 'samples-lesson8' in {ws}",
     "hint: paired sets there: samples-lesson7"),
    (["evaluate", "sr2", "--data", "images:samples"],
     "error: sr2 is a restoration model: it scores on pairs:NAME, not images:samples",
     "hint: `pixelmill catalog show pairs` lists them"),
    (["evaluate", "sr2", "--data", "pairs:samples-lesson7", "--pairs", "samples-lesson7"],
     "error: give the data to score on once: --data pairs:NAME (restoration, colorize) or --data images:NAME "
     "(segmentation)", "hint: `pixelmill catalog show pairs` and `pixelmill catalog show images` list them"),
]


@pytest.mark.parametrize("args,first,second", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_a_mistake_is_two_lines_before_any_flow(ws, args, first, second):
    cwd = ws.parent / "cwd"
    cwd.mkdir(exist_ok=True)
    code, out, err, seconds = run_cli([*args, "--workspace", str(ws)], cwd)
    print(f"{seconds:.2f} s  pixelmill {' '.join(args)}")
    assert code == 1, (out, err)
    assert err == [first.format(ws=f"file://{ws}", cwd=cwd), second], err
    assert out == []  # not even the line about the Prefect server: no flow was started


def test_a_missing_workspace_is_named(tmp_path):
    code, _, err, seconds = run_cli(["catalog", "show", "--workspace", str(tmp_path / "nowhere")], tmp_path)
    print(f"{seconds:.2f} s  pixelmill catalog show (no workspace)")
    assert code == 1
    assert err == [f"error: no workspace at file://{tmp_path}/nowhere",
                   "hint: pass --workspace or set PIXELMILL_WORKSPACE (after `make demo`: "
                   "export PIXELMILL_WORKSPACE=./pixelmill-demo/workspace)"]


def test_enhance_checks_its_input_before_loading_torch(ws):
    # standalone_mode=False: the exit code comes back instead of ending the process, which then tells on torch
    script = ("import sys\nfrom pixelmill.flows.cli import app\n"
              "print(app(sys.argv[1:], standalone_mode=False), 'torch' in sys.modules)\n")
    cwd = ws.parent
    for output in ("out.png", "out.xyz"):
        proc = subprocess.run([sys.executable, "-c", script, "enhance", "sr2", "missing.png", output, "--workspace",
                               str(ws)], cwd=cwd, env=prefect_env(cwd / "prefect"), capture_output=True, text=True,
                              timeout=120)
        assert proc.stdout.split() == ["1", "False"], proc.stdout + proc.stderr


def test_catalog_show_rounds_to_four_significant_digits(tmp_path):
    from typer.testing import CliRunner

    from pixelmill.flows.cli import app

    Catalog(str(tmp_path)).write_part("evaluations", "m", "e", [{
        "evaluation_id": "e", "model": "m:v1", "method": "model", "scope": "mean", "psnr_y": 29.123456789,
        "ssim_y": 4.884244221428722e-8, "created_at": datetime.now(UTC)}])
    result = CliRunner().invoke(app, ["catalog", "show", "evaluations", "--workspace", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| 29.12 | 4.884e-08 |" in result.output


def test_catalog_show_picks_a_group_by_its_own_option(tmp_path):
    """--model for the models' tables (--dataset, the old spelling, still works with one note)."""
    from typer.testing import CliRunner

    from pixelmill.flows.cli import app

    catalog = Catalog(str(tmp_path))
    for model in ("sr", "seg"):
        catalog.write_part("predictions", model, "p", [{"model": model, "model_version": "v1", "input_uri": "a.png",
                                                        "output_root": "file:///out", "status": "ok", "seconds": 0.5,
                                                        "created_at": datetime.now(UTC)}])
    runner = CliRunner()
    new = runner.invoke(app, ["catalog", "show", "predictions", "--model", "sr", "--workspace", str(tmp_path)])
    assert new.exit_code == 0, new.output
    assert "## predictions table: model sr" in new.output and "| sr:v1 | 1 |" in new.output
    assert "seg:v1" not in new.output and "note:" not in new.output
    old = runner.invoke(app, ["catalog", "show", "predictions", "--dataset", "sr", "--workspace", str(tmp_path)])
    assert old.exit_code == 0, old.output
    assert [line for line in old.output.splitlines() if line.startswith("note:")] == [
        "note: --dataset for the predictions table is now --model"]
    assert old.output.replace(old.output.splitlines()[0] + "\n", "", 1) == new.output
