"""The demo's self-check catches every way a catalog can be wrong, and `pixelmill demo` passes it for real."""

import json
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


@pytest.fixture(scope="module")
def demo_run(prefect_api, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`pixelmill demo`, run once for the whole suite (on the session's Prefect server): (the finished process, its
    --dir). Every check of the demo reads this run."""
    root = tmp_path_factory.mktemp("demo")
    start = time.perf_counter()
    command = [str(Path(sys.executable).parent / "pixelmill"), "demo", "--dir", str(root / "demo"),
               "--train-minutes", "0.1", "--segment-minutes", "10", "--segment-steps", "80"]
    proc = subprocess.run(command, cwd=root, env=prefect_api.env(), capture_output=True, text=True, timeout=1100)
    print(f"pixelmill demo: {time.perf_counter() - start:.0f} s wall")
    return proc, root / "demo"


@pytest.mark.slow  # the whole pipeline in a subprocess: 66-97 s on 2 shared cores (once per module: demo_run)
@pytest.mark.timeout(1200)
def test_pixelmill_demo_command_passes_its_check(demo_run):
    proc, _ = demo_run
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]  # stderr carries the flows' Prefect logs, by design
    assert "demo check passed: one catalog row per file, 15 photographs ok" in out, out[-4000:]
    assert "4 broken files recorded as error rows, 15 training pairs." in out, out[-4000:]
    # with 6 s of training either outcome is right, but the decision must be printed
    assert re.search(r"^  (promoted: demo-sr-x2:v1 is now demo-sr-x2@production|not promoted: )", out, re.M), out


@pytest.mark.slow  # reads the module's one demo run
@pytest.mark.timeout(1200)
def test_demo_trains_evaluates_applies_and_segments(demo_run):
    """What the demo's report says, from its printed summary and its workspace (was an in-process second run)."""
    proc, root = demo_run
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    steps, images = map(int, re.search(r"^model demo-sr-x2:v1: (\d+) training steps on the CPU, evaluated on (\d+) "
                                       r"held-out images$", out, re.M).groups())
    assert steps > 0 and images >= 1
    model, bicubic = (float(re.search(rf"^  {label}\s+Y-PSNR (-?[\d.]+) dB", out, re.M).group(1))
                      for label in ("model", "bicubic"))
    promoted = re.search(r"^  promoted: demo-sr-x2:v1 is now demo-sr-x2@production", out, re.M) is not None
    if model != bicubic:  # printed to 0.01 dB: a tie there says nothing
        assert promoted == (model > bicubic), (model, bicubic, promoted)
    assert re.search(r"^applied demo-sr-x2\S* to the bucket: 15 photographs enhanced, 4 failed, 0 skipped", out, re.M), out
    assert len([p for p in (root / "enhanced").rglob("*") if p.is_file()]) == 15
    # it ends with the lineage of one output, back to the images the model was trained on
    lineage = out.split("where one enhanced photograph came from", 1)[1]
    assert "enhanced/modes/rocket-exif-rotated.png  (output, found by output_uri)" in lineage
    assert "model demo-sr-x2:v1" in lineage and "trained on pairs:samples-sr-x2" in lineage
    assert lineage.count("(images:samples, sha256 matches)") >= 1 and "NOT in the images table" not in lineage
    seg_model, majority = (float(re.search(rf"^  {label}\s+mean IoU ([\d.]+)", out, re.M).group(1))
                           for label in ("model", "majority"))
    assert seg_model > majority, (seg_model, majority)
    aliases = json.loads((root / "workspace" / "models" / "demo-scenes" / "aliases.json").read_text())
    assert aliases.get("production") == "v1", aliases  # the segmentation model won and was promoted
