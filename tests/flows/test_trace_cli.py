"""`pixelmill lineage` and `pixelmill review`: the typer app in this process (CliRunner) on a small real workspace
(tests/tasks/core/test_lineage.py builds it), and once as a fresh `pixelmill` process that must neither look for a
Prefect server nor import Prefect or torch: both commands only read the catalog."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pixelmill.flows.cli import app
from pixelmill.tasks.core import storage
from tests.flows.test_cli_imports import prefect_env
from tests.helpers import noise_png, unexpected_stderr
from tests.tasks.core.test_lineage import FLAGGED, SET, build_trained, one_torch_thread, record_outputs  # noqa: F401

runner = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    built = build_trained(tmp_path_factory.mktemp("trace"))
    record_outputs(built)
    return built


def cli(*args: str):
    return runner.invoke(app, list(args))


def test_lineage_of_an_output_as_text_and_json(built, tmp_path):
    output = str(built.output("t1.png"))
    text = cli("lineage", output, "--workspace", built.ws)
    assert text.exit_code == 0, text.output
    for shown in ("(output, found by output_uri)", "written by run run-1", "model sr:v1", "@production",
                  f"trained on pairs:{SET}", "recipe sr-x2", "data set images:d: 6 images", FLAGGED):
        assert shown in text.stdout, shown

    as_json = cli("lineage", output, "--json", "--workspace", built.ws)
    found = json.loads(as_json.stdout)
    assert found["model"]["ref"] == "sr:v1" and found["training"]["source"] == f"pairs:{SET}"
    assert found["prediction"]["output_uri"] == storage.normalize_url(output)
    assert all(p["image_sha256_matches"] for p in found["training"]["examples"])

    shutil.copy(output, tmp_path / "copy.png")
    copy = json.loads(cli("lineage", str(tmp_path / "copy.png"), "--json", "--workspace", built.ws).stdout)
    assert copy["target"]["matched_by"] == "output_sha256" and copy["prediction"]["output_uri"].endswith("/t1.png")


def test_lineage_of_a_model_reference(built, monkeypatch):
    result = cli("lineage", "sr@production", "--workspace", built.ws)
    assert result.exit_code == 0, result.output
    assert "model sr:v1" in result.stdout and "run run-1 -> " in result.stdout
    assert "outputs: 7 (6 ok, 1 error, 1 flagged)" in result.stdout
    # a file of the same name in the current directory wins over the model
    monkeypatch.chdir(built.src)
    shutil.copy(built.src / "t2.png", built.src / "sr")
    try:
        found = json.loads(cli("lineage", "sr", "--json", "--workspace", built.ws).stdout)
        assert found["kind"] == "file" and found["target"]["matched_by"] == "sha256"
    finally:
        (built.src / "sr").unlink()


def test_unknown_files_and_models_are_clear_errors(built, tmp_path):
    (tmp_path / "stranger.png").write_bytes(noise_png(10, 10, seed=3))
    result = cli("lineage", str(tmp_path / "stranger.png"), "--workspace", built.ws)
    assert result.exit_code == 1 and result.stdout == ""
    error, hint = result.stderr.splitlines()
    assert error.startswith(f"error: {tmp_path / 'stranger.png'} is not an output or cataloged file of workspace "
                            f"{storage.normalize_url(built.ws)}")
    assert hint.startswith("hint: give an output written by `pixelmill apply`")

    typo = cli("lineage", "sr3", "--workspace", built.ws)
    assert typo.exit_code == 1
    assert typo.stderr.splitlines() == [
        f"error: 'sr3' is neither a file nor a model of workspace {storage.normalize_url(built.ws)}",
        f"hint: unknown model 'sr3' in {storage.normalize_url(built.ws)}/models; known models: sr; train one with "
        "`pixelmill train restoration`"]


def test_review_lists_a_runs_flagged_outputs(built):
    result = cli("review", "run-1", "--workspace", built.ws)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "run run-1: 1 of 7 outputs flagged (1 failed)"
    assert lines[1].endswith("/src/t1.png") and "/out/t1.png" in lines[2] and FLAGGED in lines[3]
    assert "NIQE 4 -> 4.5" in lines[4]

    rows = json.loads(cli("review", "run-1", "--json", "--workspace", built.ws).stdout)
    assert rows["flagged"] == 1 and rows["outputs"] == 7
    assert [r["output_uri"].rsplit("/", 1)[1] for r in rows["rows"]] == ["t1.png"]

    record_outputs(built, run_id="run-2", flagged=())
    assert cli("review", "run-2", "--workspace", built.ws).stdout.startswith("run run-2: 0 of 7 outputs flagged")
    unknown = cli("review", "nope", "--workspace", built.ws)
    assert unknown.exit_code == 1 and unknown.stderr.splitlines()[0].startswith("error: no outputs of run 'nope'")
    assert "newest runs there: run-2" in unknown.stderr  # run-2 wrote the same outputs again: its rows won


SCRIPT = """
import sys

from pixelmill.flows.cli import app

for args in (["lineage", sys.argv[2], "--workspace", sys.argv[1]], ["lineage", "sr:v1", "--workspace", sys.argv[1]],
             ["review", "run-1", "--json", "--workspace", sys.argv[1]]):
    app(args, standalone_mode=False)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "torch", "torchvision"))
assert not loaded, f"imported {loaded[:5]}"
print("ran without prefect or torch", flush=True)
"""


def test_commands_start_no_prefect_and_no_torch(built, tmp_path):
    # PIXELMILL_LOCAL_PREFECT_URL on a closed port: a command that looked for a server would fail or hang
    env = prefect_env(tmp_path / "prefect") | {"PIXELMILL_LOCAL_PREFECT_URL": "http://127.0.0.1:9/api"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, built.ws, str(built.output("t1.png"))], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert unexpected_stderr(proc.stderr) == []
    assert "model sr:v1" in proc.stdout and proc.stdout.rstrip().endswith("ran without prefect or torch")
