"""Where shards run is one string (flows/runners.py), the same for the CLI's --runner, a flow's `runner` parameter
and PIXELMILL_RUNNER (a deployment's job variable): parsed strictly, read from deploy/dask.yaml for profiles, and a
remote cluster that cannot see the workspace is refused before any shard runs."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pixelmill.flows.runners import dask_profile, is_remote, runner_name
from pixelmill.flows.stages import run_stage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import ConfigError
from pixelmill.tasks.core.shards import commit_shard
from tests.flows.test_crappify_remote_dask import free_port
from tests.flows.test_stages import SCORE, score_one

BIN = Path(sys.executable).parent


@task(cache_policy=NO_CACHE)
def score_shard(shard, workspace: str):
    """test_stages's shard without its in-process counters, which a process pool could not share."""
    return commit_shard(Catalog(workspace), "images", shard.group, shard.shard_id,
                        [score_one(n, shard.group) for n in shard.names])


PLAIN = dataclasses.replace(SCORE, run_shard=score_shard)


@flow
def score(workspace: str, group: str, names: list[str], runner: str | None = None) -> dict:
    return run_stage(PLAIN, workspace, 2, plan=dict(workspace=workspace, group=group, names=names, size=2),
                     runner=runner)


def test_runner_names(monkeypatch):
    monkeypatch.delenv("PIXELMILL_RUNNER", raising=False)
    assert runner_name(None) == "threads"
    assert runner_name("local") == "dask"  # the older `--dask local`
    assert runner_name("tcp://scheduler:8786") == "tcp://scheduler:8786"
    monkeypatch.setenv("PIXELMILL_RUNNER", "processes")  # a job variable or the worker's environment
    assert runner_name(None) == "processes"
    assert runner_name("threads") == "threads"  # a parameter wins over the environment
    with pytest.raises(ConfigError, match="unknown runner 'thread'") as err:
        runner_name("thread")
    assert "tcp://HOST:8786" in err.value.hint


def test_dask_profiles_come_from_the_settings_file(monkeypatch, tmp_path):
    monkeypatch.chdir(Path(__file__).parents[2])  # deploy/dask.yaml, relative to where the worker runs
    monkeypatch.delenv("PIXELMILL_DASK_CONFIG", raising=False)
    assert dask_profile("default") == dask_profile("local")
    assert dask_profile("existing") == {"address": "tcp://dask-scheduler:8786"}
    assert is_remote("dask:existing") and not is_remote("dask:local") and is_remote("tcp://h:1")
    assert not is_remote("threads") and not is_remote("dask")
    with pytest.raises(ConfigError, match="no profile 'nope'") as err:
        dask_profile("nope")
    assert "local-adaptive" in err.value.hint
    monkeypatch.setenv("PIXELMILL_DASK_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="no Dask settings file"):
        dask_profile("local")


@pytest.mark.usefixtures("prefect_server")
def test_a_process_pool_runner_gives_the_same_rows_as_threads(tmp_path):
    names = ["a", "b", "bad-1", "c", "d"]
    on_threads = score(str(tmp_path / "t"), "q", names)
    on_processes = score(str(tmp_path / "p"), "q", names, runner="processes")
    assert on_processes["status"] == on_threads["status"] == {"ok": 4, "error": 1}
    rows = [sorted(Catalog(str(tmp_path / w)).read("images", "q", columns=["uri", "status"]).to_pylist(),
                   key=lambda r: r["uri"]) for w in "tp"]
    assert rows[0] == rows[1]


def can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.fixture
def blind_cluster(tmp_path):
    """A scheduler and one worker that sees an empty folder where this process keeps `tmp_path` (a tmpfs mounted
    over it in the worker's own mount namespace): a worker of another machine, as a local workspace sees it."""
    if not can_unshare():
        pytest.skip("needs `unshare -m` (root, mount namespaces) to give a worker a filesystem of its own")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELMILL_")}
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    worker = f"mount -t tmpfs none {tmp_path} && exec {BIN / 'dask'} worker {address} --nthreads 1 --no-dashboard"
    procs.append(subprocess.Popen(["unshare", "-m", "sh", "-c", worker], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True))
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
        yield address
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_remote_cluster_that_cannot_see_the_workspace_is_refused_before_any_work(blind_cluster, tmp_path):
    ws = str(tmp_path / "ws")
    with pytest.raises(ConfigError) as err:
        score(ws, "q", ["a", "b"], runner=blind_cluster)
    assert re.fullmatch(rf"the Dask workers of {blind_cluster} cannot see {ws} as this flow does \(1 of 1; "
                        r"tcp://[0-9.:]+: StorageError: file://.*/\.pixelmill-probe-\w+ does not exist\)",
                        err.value.message), err.value.message
    assert "s3:// bucket" in err.value.hint
    assert Catalog(ws).read("images", "q").num_rows == 0  # no shard ran
    assert [p.name for p in Path(ws).rglob("*") if p.is_file() and "probe" in p.name] == []  # the probe is gone


def test_checking_a_runner_name_does_not_import_prefect():
    """The CLI checks --runner before it points Prefect at a server, which must happen before Prefect is imported
    (flows/console.py choose_server): the check must not import it."""
    code = ("import sys; from pixelmill.flows.cli.common import runner_of; runner_of('dask', None); "
            "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
