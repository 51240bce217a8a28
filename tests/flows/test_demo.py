"""The demo's self-check catches every way a catalog can be wrong, and `pixelmill demo` passes it for real."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pixelmill.flows.demo import check_catalog
from pixelmill.tasks.core import storage
from tests.helpers import ingest_local


@pytest.fixture(scope="module")
def catalog_rows(sample_folder, tmp_path_factory):
    """The real catalog of the sample files (ingested without Prefect), and the check's inputs."""
    root, expected = sample_folder
    bucket = storage.normalize_url(str(root))
    rows = ingest_local(str(root), str(tmp_path_factory.mktemp("ws"))).read("images", "d").to_pylist()
    return rows, expected, bucket


def test_a_correct_catalog_passes(catalog_rows):
    rows, expected, bucket = catalog_rows
    assert len(rows) == len(expected) == 19
    assert check_catalog(rows, expected, bucket) == []


def drop(rows, bucket, name):
    return [r for r in rows if r["uri"] != storage.join(bucket, name)]


def change(rows, bucket, name, **fields):
    return [r | fields if r["uri"] == storage.join(bucket, name) else r for r in rows]


def duplicate(rows, bucket, name):
    return rows + [r for r in rows if r["uri"] == storage.join(bucket, name)]


def add_extra(rows, bucket, name):
    return rows + [rows[0] | {"uri": storage.join(bucket, name)}]


@pytest.mark.parametrize("wrong, name, says", [
    (drop, "photos/cat.png", "no catalog row"),
    (duplicate, "gray/coins.bmp", "2 catalog rows, expected one"),
    (add_extra, "photos/not-a-sample.png", "not a sample"),
    (lambda rows, b, n: change(rows, b, n, format="PNG"), "photos/hubble.tif", "expected ok TIFF"),
    (lambda rows, b, n: change(rows, b, n, width=511), "photos/astronaut.jpg", "expected ok JPEG 512x512"),
    (lambda rows, b, n: change(rows, b, n, status="ok", error=None, width=512, height=512, format="JPEG"),
     "broken/truncated.jpg", "expected error truncated, got ok"),
    (lambda rows, b, n: change(rows, b, n, error="corrupt: bad data"), "broken/bomb.png", "expected error too_large"),
], ids=["missing", "duplicated", "extra", "format", "size", "ok-not-error", "wrong-error-kind"])
def test_each_wrong_row_is_one_problem_naming_the_file(catalog_rows, wrong, name, says):
    rows, expected, bucket = catalog_rows
    problems = check_catalog(wrong(rows, bucket, name), expected, bucket)
    assert len(problems) == 1, problems
    assert name in problems[0] and says in problems[0], problems


@pytest.mark.slow  # the whole pipeline in a subprocess on Prefect's embedded server: 2-3 minutes alone
@pytest.mark.timeout(1200)
def test_pixelmill_demo_command_passes_its_check(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    start = time.perf_counter()
    command = [str(Path(sys.executable).parent / "pixelmill"), "demo", "--dir", str(tmp_path / "demo"),
               "--train-minutes", "0.1", "--segment-minutes", "10", "--segment-steps", "80"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1100)
    print(f"pixelmill demo: {time.perf_counter() - start:.0f} s wall")
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert "demo check passed: one catalog row per file, 15 photographs ok" in out, out[-4000:]
    # with 6 s of training either outcome is right, but the decision must be printed
    assert re.search(r"^  (promoted: demo-sr-x2:v1 is now demo-sr-x2@production|not promoted: )", out, re.M), out
