"""The nightly chain as production runs it, on one machine: PostgreSQL behind `prefect server start`, the
deployments of deploy/prefect.yaml registered by `prefect deploy`, two `prefect worker` processes on the process
pool, a Dask scheduler and two Dask workers as processes of their own, the workspace and the archive on SeaweedFS.

2,000 images land in the archive. Then, each step on a deterministic hook (tasks/core/faults.py), not on a clock:
1. an ingest run held at its first shard commit loses its worker to kill -9, and the automation of
   deploy/automations.yaml marks it Crashed (no heartbeat);
2. ingest-nightly runs on the Dask workers (PIXELMILL_RUNNER in the workers' environment) and its completion event
   starts apply-nightly on what it ingested; a second apply asked for meanwhile waits for the first (ENQUEUE);
3. during the apply one Dask worker kills itself (-9) after writing outputs, the other holds mid-shard while the
   Prefect server is restarted (PostgreSQL keeps its state), then goes on;
4. the runs end with 2,000 outputs and 2,000 prediction rows: none missing, none twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pixelmill.tasks.core import registry
from pixelmill.tasks.core.catalog import Catalog
from tests.deploy.test_deploy import DEPLOY, WORKSPACE
from tests.deploy.test_real_server import final_state, wait_for
from tests.faults.driver import PREFECT, PrefectServer, free_port, kill_group
from tests.helpers import noise_png
from tests.seaweed import SeaweedServer
from tests.tasks.inference.test_apply import register_tiny

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.timeout(1500)]

BIN = Path(sys.executable).parent
IMAGES = 2000
SOURCE = "s3://archive/incoming"
OUTPUT = "archive/enhanced"
# Dask worker B dies after writing this many outputs (into its second shard of 64); A holds at its own count.
B_DIES_AFTER, A_HOLDS_AT = 70, 100
# A heartbeat every 30 s (Prefect's minimum) and the automation's window cut from 90 s to 65 s: a killed run is
# marked Crashed a minute after its last beat, and a run beating through a server restart is not.
AUTOMATION_WITHIN = 65


class Procs:
    """Long-running processes of the test, each in its own process group, with a log file each."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
        return self.procs[name]

    def tail(self, chars: int = 2500) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(self.logs.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs.values():
            kill_group(proc, timeout=30)


def run(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_file(pattern: Path, what: str, procs: Procs, timeout: float = 600) -> Path:
    deadline = time.monotonic() + timeout
    while not (found := sorted(pattern.parent.glob(pattern.name))):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{procs.tail()}")
        time.sleep(0.2)
    return found[0]


def parents(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        chain.append(pid)
        status = Path(f"/proc/{pid}/status").read_text()
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return chain


@pytest.fixture
def stack(postgres, tmp_path, monkeypatch):
    """Everything but the runs: S3 with the archive and the model, the server on PostgreSQL, the deployments and the
    automation registered, the Dask cluster, two process-pool workers. Yields what the test drives."""
    procs = Procs(tmp_path)
    s3 = SeaweedServer(tmp_path / "s3")
    (tmp_path / "s3").mkdir()
    s3.start()
    server = PrefectServer(tmp_path / "prefect", database=postgres.create_database(f"prefect_{os.getpid()}"))
    server.home.mkdir()
    try:
        for key, value in s3.environ().items():
            monkeypatch.setenv(key, value)
        fs = s3.client()
        fs.mkdir("archive")
        fs.mkdir("pixelmill")
        fs.pipe({f"archive/incoming/day{i % 4}/p{i:04d}.png": noise_png(32, 32, seed=i) for i in range(IMAGES)})
        register_tiny(WORKSPACE, name="sr", scale=2)
        registry.set_alias(WORKSPACE, registry.resolve(WORKSPACE, "sr:v1"), "production")

        server.start()
        env = server.env(**s3.environ(), PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="5")
        run([PREFECT, "work-pool", "create", "pixelmill-cpu", "--type", "process"], env)
        run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(DEPLOY / "prefect.yaml")], env)
        automation = yaml.safe_load((DEPLOY / "automations.yaml").read_text())
        automation["trigger"]["within"] = AUTOMATION_WITHIN
        (tmp_path / "automation.yaml").write_text(yaml.safe_dump(automation))
        run([PREFECT, "automation", "create", "--from-file", str(tmp_path / "automation.yaml")], env)

        port = free_port()
        scheduler = f"tcp://127.0.0.1:{port}"
        procs.start("dask-scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                       "--no-dashboard"], env)
        gate = tmp_path / "gate"
        faults = {"A": {"PIXELMILL_FAULT": f"storage.write:{A_HOLDS_AT}", "PIXELMILL_FAULT_HOLD": str(gate)},
                  "B": {"PIXELMILL_FAULT": f"storage.write:{B_DIES_AFTER}"}}
        for name, fault in faults.items():  # no nanny: a worker killed stays dead, as a lost machine does
            procs.start(f"dask-{name}", [str(BIN / "dask"), "worker", scheduler, "--name", name, "--nthreads", "1",
                                         "--no-nanny", "--no-dashboard"],
                        env | fault | {"PIXELMILL_FAULT_WHERE": f"/{OUTPUT}/"})
        from distributed import Client

        with Client(scheduler, timeout=60) as client:
            client.wait_for_workers(2, timeout=180)
        worker_env = env | {"PIXELMILL_RUNNER": scheduler}  # the runner of every run these workers start
        for name in ("worker-1", "worker-2"):
            procs.start(name, [PREFECT, "worker", "start", "--pool", "pixelmill-cpu", "--type", "process",
                               "--name", name], worker_env)
        yield dict(server=server, env=env, worker_env=worker_env, procs=procs, fs=fs, gate=gate, tmp=tmp_path)
    except BaseException:
        print(procs.tail(), (server.home / "server.log").read_text(errors="replace")[-3000:]
              if (server.home / "server.log").exists() else "")
        raise
    finally:
        procs.stop()
        server.stop()
        s3.stop(kill=True)


def test_nightly_chain_spreads_over_workers_and_survives_kills_and_a_server_restart(stack):
    asyncio.run(drive(**stack))


async def drive(server, env, worker_env, procs, fs, gate, tmp):
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with PrefectClient(api=server.url) as client:
        ingest = await client.read_deployment_by_name("ingest/ingest-nightly")
        apply = await client.read_deployment_by_name("apply/apply-nightly")
        # from deploy/prefect.yaml, as `prefect deploy` registered it
        assert apply.global_concurrency_limit.limit == 1
        assert apply.concurrency_options.collision_strategy.value == "ENQUEUE"

        # 1. A run whose worker is killed ends Crashed through the automation (its heartbeats stop).
        held = tmp / "held-ingest"
        job_env = {"PIXELMILL_WORKSPACE": WORKSPACE, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
                   "PIXELMILL_FAULT": "shard.commit:1", "PIXELMILL_FAULT_HOLD": str(held)}
        doomed = await client.create_flow_run_from_deployment(ingest.id, parameters={"runner": "threads"},
                                                              job_variables={"env": job_env})
        flow_pid = int(wait_file(Path(f"{held}.*"), "the ingest run to reach its first shard commit", procs)
                       .suffix[1:])
        (name,) = [n for n, p in procs.procs.items() if p.pid in parents(flow_pid)]
        os.kill(flow_pid, signal.SIGKILL)
        kill_group(procs.procs.pop(name))  # the worker and all it started: a lost machine
        crashed = await final_state(client, doomed.id, timeout=300)
        assert crashed.state.is_crashed(), crashed.state
        assert "pixelmill-crash-zombie-flow-runs" in (crashed.state.message or ""), crashed.state.message
        procs.start(f"{name}-again", [PREFECT, "worker", "start", "--pool", "pixelmill-cpu", "--type", "process",
                                      "--name", f"{name}-again"], worker_env)

        # 2. ingest-nightly on the Dask workers; its completion starts apply-nightly over what it ingested.
        nightly = await client.create_flow_run_from_deployment(ingest.id)
        nightly = await final_state(client, nightly.id, timeout=600)
        assert nightly.state.is_completed(), f"{nightly.state}\n{procs.tail()}"
        images = Catalog(WORKSPACE).read("images", "archive-incoming", columns=["uri", "status"]).to_pylist()
        assert len(images) == len({r["uri"] for r in images}) == IMAGES
        assert {r["status"] for r in images} == {"ok"}

        async def applies():
            return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
                any_=[apply.id])))

        (triggered,) = await wait_for("the apply that ingest's completion starts", applies, timeout=120)
        assert triggered.parameters["input"] == SOURCE  # the source the ingest run read, from its event
        asked = await client.create_flow_run_from_deployment(apply.id)  # while the first is still to run

        # 3. Dask worker B dies (-9) after writing outputs; A holds mid-shard; the server restarts meanwhile.
        wait_file(Path(f"{gate}.*"), "Dask worker A to hold mid-shard", procs, timeout=600)
        dask_b = procs.procs["dask-B"]
        while dask_b.poll() is None:  # B has written its share or dies on the next outputs, A's hold aside
            await asyncio.sleep(0.2)
        assert dask_b.returncode == -signal.SIGKILL
        server.stop()
        server.start()
        gate.touch()

        first, second = sorted([await final_state(client, r.id, timeout=900) for r in (triggered, asked)],
                               key=lambda r: r.start_time or r.expected_start_time)
    runs = {r.id: r for r in (first, second)}
    assert second.state.is_completed(), f"{second.state}\n{procs.tail()}"
    # one at a time: the second started after the first had ended
    assert first.end_time <= second.start_time, (first.end_time, second.start_time)

    # 4. Every input once, every output on storage, whichever run wrote it.
    rows = Catalog(WORKSPACE).read("predictions", "sr").to_pylist()
    assert len(rows) == IMAGES and {r["status"] for r in rows} == {"ok"}
    assert {r["run_id"] for r in rows} <= {str(i) for i in runs}
    print("apply runs:", [(r.state.type.value, sum(row["run_id"] == str(r.id) for row in rows)) for r in (first, second)])
    inputs = sorted(r["input_uri"] for r in rows)
    assert inputs == sorted(f"{SOURCE}/day{i % 4}/p{i:04d}.png" for i in range(IMAGES))  # none missing, none twice
    fs.invalidate_cache()
    outputs = sorted(p.split(f"{OUTPUT}/", 1)[1] for p in fs.find(OUTPUT))
    assert outputs == sorted(f"day{i % 4}/p{i:04d}.webp" for i in range(IMAGES))
    assert sorted(r["output_uri"] for r in rows) == [f"s3://{OUTPUT}/{o}" for o in outputs]
