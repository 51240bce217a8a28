"""Fault points kill the process at the armed hit, and only there."""

import subprocess
import sys

import pytest

from pixelmill.tasks.core import faults

SCRIPT = """
import sys
from pixelmill.tasks.core import storage
for i in range(5):
    storage.write_bytes(f"{sys.argv[1]}/f{i}.bin", b"x")
    print(f"wrote {i}", flush=True)
"""


def test_a_process_dies_right_after_the_armed_write(tmp_path):
    env = {"PIXELMILL_FAULT": "storage.write:3", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True)
    assert proc.returncode == -9
    assert proc.stdout.split() == ["wrote", "0", "wrote", "1"]  # the third write landed, its print never ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.bin", "f1.bin", "f2.bin"]


def test_unarmed_or_other_points_do_nothing(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.fault_point("storage.write")
    monkeypatch.setenv(faults.ENV, "train.checkpoint:1")
    faults.fault_point("storage.write")  # another point: still alive


def test_an_unknown_point_is_refused(monkeypatch):
    monkeypatch.setenv(faults.ENV, "storage.wirte:1")
    with pytest.raises(ValueError, match="unknown fault point"):
        faults.fault_point("storage.write")
