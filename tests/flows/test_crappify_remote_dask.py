"""`crappify --dask ADDRESS` on a cluster started apart from the flow (`dask scheduler` + `dask worker`, its own
PREFECT_HOME and no PREFECT_API_URL): the shard task runs land on the flow's Prefect server, not on a temporary
server that each worker would start for itself. (With Prefect 3.9 this holds without `api_for_workers` too: the
flow's settings, sent with each task, carry the embedded server's URL; the test guards it against a change.)
Workers that cannot reach the flow's API get one warning."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pixelmill.flows.runners import api_for_workers
from tests.flows.test_cli_imports import prefect_env
from tests.helpers import ingest_local, make_image, unexpected_stderr

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and one worker process, each in its own process group, with a PREFECT_HOME of their own."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = prefect_env(tmp_path / "worker-prefect")
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                   "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True))
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
        yield address, tmp_path / "worker-prefect"
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)


def task_run_names(db: Path) -> list[str]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return [name for (name,) in conn.execute("select name from task_run")]


@pytest.mark.slow  # an embedded Prefect server and a Dask cluster: about a minute on two shared cores
def test_shard_runs_reach_the_flows_server(cluster, tmp_path):
    address, worker_home = cluster
    photos, ws = tmp_path / "photos", str(tmp_path / "ws")
    photos.mkdir()
    for seed in range(3):
        make_image(64, 48, seed=seed).save(photos / f"p{seed}.png")
    ingest_local(str(photos), ws, "d")
    flow_home = tmp_path / "flow-prefect"
    env = prefect_env(flow_home) | {"PIXELMILL_LOCAL_PREFECT_URL": "http://127.0.0.1:9/api"}  # the embedded server
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "pixelmill"), "crappify", "--dataset", "d", "--dask", address, "--workspace", ws],
                          env=env, capture_output=True, text=True, timeout=400)
    print(f"crappify on a remote Dask cluster: {time.perf_counter() - start:.1f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert unexpected_stderr(proc.stderr) == [], proc.stderr  # reachable: no warning
    shards = [n for n in task_run_names(flow_home / "prefect.db") if n.startswith("crappify-d-lesson7-")]
    assert len(shards) == 1, task_run_names(flow_home / "prefect.db")

    # The negative half must be able to fail: the worker did run the shard, the database checked below is the one
    # a temporary server of the worker would write, and the module such a server runs from was never imported.
    def worker_facts() -> dict:
        import sys

        from prefect.settings import get_current_settings

        return {"ran_shard": "pixelmill.tasks.prep.crappify" in sys.modules,
                "database": get_current_settings().server.database.connection_url.get_secret_value(),
                "temporary_server": "prefect.server.api.server" in sys.modules}

    from distributed import Client

    with Client(address, timeout=60) as client:
        (facts,) = client.run(worker_facts).values()
    assert facts["ran_shard"], facts
    assert facts["database"].endswith(f"{worker_home}/prefect.db"), facts
    assert facts["temporary_server"] is False, facts
    assert not [n for n in task_run_names(worker_home / "prefect.db") if n.startswith("crappify-")]


@pytest.mark.slow
def test_unreachable_api_is_one_warning(cluster, caplog):
    address, _ = cluster
    with caplog.at_level(logging.WARNING, logger="pixelmill.dask"), api_for_workers(address, "http://127.0.0.1:9/api"):
        pass
    assert [r.getMessage() for r in caplog.records] == [
        "the Dask workers cannot reach the Prefect API at http://127.0.0.1:9/api: their shard task runs go to "
        "temporary servers of their own; to watch cluster work, run a shared Prefect server and set PREFECT_API_URL "
        "to it"]
