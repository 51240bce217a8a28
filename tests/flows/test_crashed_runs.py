"""A run whose process is gone is marked Crashed by the next run of the same stage and group; a live one is not.

Runs killed for real (kill -9 of the CLI's process group) are in tests/faults/test_crashed_runs.py.
"""

import os
import socket
import subprocess
import sys
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Completed, Running

from pixelmill.flows.crappify import crappify
from pixelmill.flows.ingest import ingest
from pixelmill.tasks.core import runs
from pixelmill.tasks.prep.crappify import CrappifyConfig
from tests.helpers import noise_png

pytestmark = pytest.mark.usefixtures("prefect_server")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def earlier_run(flow, name: str, state) -> str:
    with get_client(sync_client=True) as client:
        return str(client.create_flow_run(flow, name=name, state=state).id)


def state_of(run_id: str):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def lease_for(run_id: str, stage: str, group: str, pid: int) -> runs.Lease:
    mine = runs.new_lease(run_id, stage, group)
    return runs.Lease(**{**mine.__dict__, "pid": pid,
                         "pid_started": runs.process_started(pid) if pid == os.getpid() else "1"})


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"img{i}.png").write_bytes(noise_png(40, 32, i))
    return str(src)


def leases_left(ws: str, stage: str, group: str, expected: list[str]) -> list[str]:
    deadline = time.time() + 10  # a finished run's heartbeat thread removes its lease within a poll
    while (left := [lease.flow_run_id for lease in runs.read_leases(ws, stage, group)]) != expected \
            and time.time() < deadline:
        time.sleep(0.05)
    return left


def test_ingest_marks_a_dead_run_crashed_and_leaves_a_live_one(source, tmp_path):
    ws = str(tmp_path / "ws")
    dead = earlier_run(ingest, "ingest-d", Running())
    alive = earlier_run(ingest, "ingest-d", Running())
    finished = earlier_run(ingest, "ingest-d", Completed())
    unknown = "00000000-0000-4000-8000-000000000000"  # a run of another Prefect server
    gone_pid = dead_pid()
    for run_id, pid in ((dead, gone_pid), (alive, os.getpid()), (finished, dead_pid()), (unknown, dead_pid())):
        runs.write_lease(ws, lease_for(run_id, "ingest", "d", pid))

    summary = ingest(source, dataset="d", workspace=ws)
    assert summary["status"] == {"ok": 3}

    crashed = state_of(dead)
    assert crashed.type == StateType.CRASHED
    assert crashed.message.startswith("marked Crashed by a later ingest run of d (ingest-d, ")
    assert crashed.message.endswith(f"): its process {gone_pid} on {socket.gethostname()} is gone")
    assert state_of(alive).type == StateType.RUNNING  # its process lives: it may be a legitimate overlapping run
    assert state_of(finished).type == StateType.COMPLETED
    # the dead runs' leases are gone, the live one's stays, and this run's went when it ended
    assert leases_left(ws, "ingest", "d", [alive]) == [alive]


def test_temporary_files_are_removed_only_when_no_other_run_is_alive(source, tmp_path):
    ws = tmp_path / "ws"
    ingest(source, dataset="d", workspace=str(ws))
    stale = ws / "datasets" / "d-sr-x2" / "train" / "hr" / ".tmp-0123456789abcdef"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a png")
    os.utime(stale, (time.time() - 60, time.time() - 60))

    other = earlier_run(crappify, "crappify-d-sr-x2", Running())
    runs.write_lease(str(ws), lease_for(other, "crappify", "d-sr-x2", os.getpid()))
    crappify("d", CrappifyConfig(recipe="sr-x2"), workspace=str(ws))
    assert stale.exists()  # another run is writing: its temporary files may be in use

    runs.remove_lease(str(ws), lease_for(other, "crappify", "d-sr-x2", os.getpid()))
    summary = crappify("d", CrappifyConfig(recipe="sr-x2"), workspace=str(ws))
    assert not stale.exists() and summary["pairs"] == 3


def test_flow_run_names_say_what_runs(source, tmp_path):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    ws = str(tmp_path / "ws")
    ingest(source, workspace=ws)  # no data set given: named after the source folder
    crappify("src", CrappifyConfig(recipe="sr-x2"), workspace=ws)
    with get_client(sync_client=True) as client:
        names = [r.name for r in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["ingest-src", "crappify-src-sr-x2"])))]
    assert sorted(names)[-2:] == ["crappify-src-sr-x2", "ingest-src"]


def test_apply_removes_what_a_killed_apply_left_in_its_output_folder(source, tmp_path):
    from pixelmill.flows.apply import run_apply
    from pixelmill.tasks.inference.apply import ApplyConfig
    from tests.tasks.inference.test_apply import register_tiny

    ws, out = tmp_path / "ws", tmp_path / "out"
    ref = register_tiny(str(ws), name="sr")
    stale = [out / "sub" / ".tmp-0123456789abcdef", ws / "catalog" / "predictions" / "sr" / ".tmp-fedcba9876543210"]
    for path in stale:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"half an output")
        os.utime(path, (time.time() - 60, time.time() - 60))
    summary = run_apply(ref, source, str(out), ApplyConfig(tile=32, overlap=8), workspace=str(ws))
    assert summary["processed"] == 3
    assert not any(path.exists() for path in stale)
