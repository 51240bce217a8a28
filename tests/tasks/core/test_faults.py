"""Fault points kill the process at the armed hit, and only there."""

import os
import subprocess
import sys
import time

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


def test_where_counts_only_matching_writes_and_group_kills_the_whole_group(tmp_path):
    # the armed write is the 2nd under keep/; a child process in the same group dies with the writer
    script = SCRIPT.replace('f"{sys.argv[1]}/f{i}.bin"', 'f"{sys.argv[1]}/{\'keep\' if i % 2 else \'skip\'}/f{i}.bin"')
    child = "import time; time.sleep(60)"
    launcher = (f"import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', {child!r}]); "
                f"open(sys.argv[2], 'w').write(str(c.pid)); exec({script!r})")
    env = {"PIXELMILL_FAULT": "storage.write:2", "PIXELMILL_FAULT_WHERE": "/keep/", "PIXELMILL_FAULT_GROUP": "1",
           "PATH": "/usr/bin:/bin"}
    pidfile = tmp_path / "child.pid"
    proc = subprocess.run([sys.executable, "-c", launcher, str(tmp_path), str(pidfile)], env=env,
                          capture_output=True, text=True, start_new_session=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.split() == ["wrote", "0", "wrote", "1", "wrote", "2"]  # writes 1 and 3 are under keep/
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["f1.bin", "f3.bin"]
    child_pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while alive(child_pid):  # killed with its parent: gone, or a zombie where nothing reaps orphans
        assert time.monotonic() < deadline, "the fault killed the writer but not its process group"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_hold_waits_at_the_armed_hit_until_the_gate_opens(tmp_path):
    gate = tmp_path / "gate"
    env = {"PIXELMILL_FAULT": "storage.write:2", "PIXELMILL_FAULT_HOLD": str(gate), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "out")], env=env, stdout=subprocess.PIPE,
                            text=True)
    marker = tmp_path / f"gate.{proc.pid}"
    deadline = time.monotonic() + 60
    while not marker.exists():  # the process says it reached the point
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f0.bin", "f1.bin"]  # held right after f1
    time.sleep(0.3)
    assert proc.poll() is None and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f0.bin", "f1.bin"]
    gate.touch()
    assert proc.wait(60) == 0
    assert proc.stdout.read().split()[-2:] == ["wrote", "4"]
