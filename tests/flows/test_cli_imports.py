"""The CLI's data commands stay free of PyTorch: importing torch costs seconds and hundreds of MB, and a
machine that only ingests and crappifies (a Dask worker, a scheduled job) should not pay for it."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import make_image

# Runs in a fresh interpreter: the test process has torch loaded already. Each command is the real typer app
# on Prefect's embedded server, not a test harness, so whatever a user's run imports is imported here too.
SCRIPT = """
import sys

from pixelmill.flows.cli import app


def run(args):
    app(args, standalone_mode=False)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
    assert not loaded, f"pixelmill {args[0]} imported {loaded[:5]}"
    print(f"ran {args[0]} without torch", flush=True)


folder, workspace = sys.argv[1], sys.argv[2]
run(["--help"])
run(["models", "archs"])
run(["ingest", folder, "--dataset", "d", "--workspace", workspace])
run(["crappify", "--dataset", "d", "--recipe", "lesson7", "--workspace", workspace])
"""


def prefect_env(home: Path) -> dict[str, str]:
    """The current environment, minus any Prefect settings that would point at someone else's server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {"PREFECT_HOME": str(home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


@pytest.mark.slow  # two flows in a subprocess on the session's Prefect server: 7 s (30-40 s when embedded)
def test_help_ingest_and_crappify_never_import_torch(tmp_path, prefect_api):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(4):
        make_image(w=120 + 8 * seed, h=96, seed=seed).save(folder / f"img{seed}.png")
    workspace = tmp_path / "ws"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(workspace)], cwd=tmp_path,
                          env=prefect_env(tmp_path / "prefect") | {"PREFECT_API_URL": prefect_api.url},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith("ran ")] == [
        "ran --help without torch", "ran models without torch", "ran ingest without torch",
        "ran crappify without torch"]
    # the commands really did their work, so the check covered the code paths that do it
    assert len(list((workspace / "catalog" / "images" / "d").glob("*.parquet"))) >= 1
    assert len(list((workspace / "datasets" / "d-lesson7").glob("*/lr/*"))) == 4


def test_help_wall_time_is_printed(tmp_path):
    # Speed belongs in the benchmarks; this only shows the number in `pytest -s` output.
    script = Path(sys.executable).parent / "pixelmill"
    start = time.perf_counter()
    proc = subprocess.run([str(script), "--help"], cwd=tmp_path, env=prefect_env(tmp_path / "prefect"),
                          capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    print(f"pixelmill --help: {elapsed:.2f} s wall")
    assert proc.returncode == 0, proc.stderr
    assert "ingest" in proc.stdout and "crappify" in proc.stdout
