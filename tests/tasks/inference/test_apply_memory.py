"""An 8000x8000 image goes through apply under a memory budget: peak RSS of the child process that ran it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tasks.inference.test_apply import register_tiny

ROOT = Path(__file__).resolve().parents[3]
BUDGET = 2 * 2**30

CHILD = """
import json, sys
from pixelmill.tasks.inference.apply import ApplyConfig, apply_local
from pixelmill.tasks.core.catalog import Catalog
plan = apply_local(sys.argv[1], "tiny", sys.argv[2], sys.argv[3], ApplyConfig(max_memory=int(sys.argv[4]), threads=2))
row = Catalog(sys.argv[1]).read("predictions", "tiny").to_pylist()[0]
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec
hwm = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps({"peak_rss": hwm, "row": row}, default=str))
"""


@pytest.mark.slow  # measured: 290 s on 2 shared cores (busy)
def test_an_8000_pixel_square_image_stays_under_the_memory_budget(tmp_path):
    ws = str(tmp_path / "ws")
    register_tiny(ws)
    ramp = np.arange(8000)
    arr = np.empty((8000, 8000, 3), np.uint8)  # built in uint8: the test process stays small too
    arr[..., 0] = (ramp // 31 % 256).astype(np.uint8)[None, :]
    arr[..., 1] = (ramp // 17 % 256).astype(np.uint8)[:, None]
    arr[..., 2] = arr[..., 0] ^ arr[..., 1]
    (tmp_path / "in").mkdir()
    Image.fromarray(arr).save(tmp_path / "in" / "huge.png", compress_level=1)
    del arr
    out = subprocess.run([sys.executable, "-c", CHILD, ws, str(tmp_path / "in"), str(tmp_path / "out"), str(BUDGET)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    row = result["row"]
    assert row["status"] == "ok", row["error"]
    assert (row["output_width"], row["output_height"]) == (8000, 8000) and row["tiles"] > 100
    assert result["peak_rss"] < BUDGET, f"peak RSS {result['peak_rss'] / 2**30:.2f} GiB over the budget"
    with Image.open(row["output_uri"].removeprefix("file://")) as im:
        assert im.size == (8000, 8000)
