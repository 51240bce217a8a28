"""Run leases: which earlier runs are certainly dead, and what their killed writers left behind."""

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from pixelmill.tasks.core import runs
from pixelmill.tasks.core.errors import ConfigError

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def lease(host="here", pid=100, started="5", heartbeat=NOW, run="r1") -> runs.Lease:
    return runs.Lease(run, "ingest", "d", host, pid, started, NOW.isoformat(), heartbeat.isoformat())


def running_only(pid: int, started: str | None) -> bool:
    return (pid, started) == (100, "5")


@pytest.mark.parametrize("case, reason", [
    (lease(), None),  # same host, same process still running: may be an overlapping run
    (lease(pid=101), "its process 101 on here is gone"),
    (lease(started="6"), "its process 100 on here is gone"),  # the pid now belongs to another process
    (lease(host="there", heartbeat=NOW - timedelta(seconds=299)), None),
    (lease(host="there", heartbeat=NOW - timedelta(seconds=301)), "no heartbeat from its process 100 on there for 301 s"),
    # a live-looking pid on another host says nothing: pids are per host
    (lease(host="there", pid=101, heartbeat=NOW - timedelta(hours=1)), "no heartbeat from its process 101 on there for 3600 s"),
])
def test_gone_reason(case, reason):
    assert runs.gone_reason(case, NOW, "here", running_only) == reason


def test_judge_skips_this_run_and_splits_the_others():
    leases = [lease(run="me", pid=7), lease(run="alive"), lease(run="dead", pid=8)]
    gone, alive = runs.judge(leases, "me", NOW, "here", running_only)
    assert [(g.flow_run_id, why) for g, why in gone] == [("dead", "its process 8 on here is gone")]
    assert [a.flow_run_id for a in alive] == ["alive"]


def test_is_running_tells_dead_reused_and_zombie_pids():
    me = os.getpid()
    assert runs.is_running(me, runs.process_started(me))
    assert runs.is_running(me, None)
    assert not runs.is_running(me, "1")  # the same pid with another start time: another process
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert not runs.is_running(done.pid, None)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while runs.process_started(zombie.pid) is not None:  # exited, not yet reaped
        time.sleep(0.02)
    assert not runs.is_running(zombie.pid, None)
    zombie.wait()


def test_leases_round_trip_and_unreadable_ones_are_skipped(tmp_path):
    ws = str(tmp_path)
    mine = runs.new_lease("abc", "ingest", "d")
    assert (mine.host, mine.pid) == (os.uname().nodename, os.getpid())
    runs.write_lease(ws, mine)
    (tmp_path / "runs" / "ingest" / "d" / "garbage.json").write_text("{not json")
    assert runs.read_leases(ws, "ingest", "d") == [mine]
    assert runs.read_leases(ws, "crappify", "d") == []
    runs.remove_lease(ws, mine)
    assert runs.read_leases(ws, "ingest", "d") == []


def test_groups_are_checked_like_the_stages_own_names(tmp_path):
    with pytest.raises(ConfigError, match="invalid dataset name '../x'"):
        runs.lease_uri(str(tmp_path), "ingest", "../x", "abc")
    with pytest.raises(ConfigError, match="invalid paired set name"):
        runs.lease_uri(str(tmp_path), "crappify", "a/b", "abc")


def test_remove_temp_files_takes_only_old_temporary_files(tmp_path, memory_url):
    folder = tmp_path / "datasets" / "s" / "train" / "hr"
    folder.mkdir(parents=True)
    old = [folder / ".tmp-0123456789abcdef", folder.parent / ".write-probe"]
    kept = [folder / "a-0123456789.png", folder / ".tmp-fresh"]  # a file, and a write that may be under way
    for path in old + kept:
        path.write_bytes(b"x")
    for path in old:
        os.utime(path, (time.time() - 60, time.time() - 60))
    assert runs.remove_temp_files([str(tmp_path / "datasets"), memory_url, str(tmp_path / "missing")]) == 2
    assert [p.exists() for p in old + kept] == [False, False, True, True]


def test_heartbeat_rewrites_the_lease_and_removes_it_when_the_run_ends(tmp_path):
    ws, finished = str(tmp_path), []
    beat = runs.Heartbeat(ws, runs.new_lease("abc", "ingest", "d", NOW), lambda: bool(finished), every=0.05,
                          poll=0.01).start()
    (first,) = runs.read_leases(ws, "ingest", "d")
    assert first.heartbeat_at == NOW.isoformat()
    deadline = time.time() + 10
    while runs.read_leases(ws, "ingest", "d")[0].heartbeat_at == first.heartbeat_at:
        assert time.time() < deadline, "no heartbeat written"
        time.sleep(0.01)
    finished.append(True)
    beat._thread.join(10)
    assert runs.read_leases(ws, "ingest", "d") == []
