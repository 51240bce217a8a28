"""Where a bulk flow's shard tasks run: threads in this process, a process pool, a Dask LocalCluster, a Dask
profile of deploy/dask.yaml, or a Dask scheduler. Importing it does not import Prefect (the CLI checks a
runner's name before it chooses the Prefect server, which must happen before Prefect is imported).

A runner is named by one string, the same everywhere: the CLI's `--runner`, the flows' `runner` parameter, and
the PIXELMILL_RUNNER environment variable that a deployment's job variables (or a worker's environment) set:

    threads            shards on threads of the flow's process (the default)
    processes          Prefect's process pool on the flow's machine, `--workers` processes
    dask               a Dask LocalCluster of `--workers` processes, started and stopped with the run
    dask:PROFILE       a profile of the Dask settings file ($PIXELMILL_DASK_CONFIG, else deploy/dask.yaml)
    tcp://HOST:8786    a running Dask scheduler (any scheme://address)

flows/stages.py `run_stage` switches the flow's task runner to the chosen one for its shards, so a deployment's
parameter or job variable chooses as well as the CLI does. A remote cluster must share the workspace (and the
stage's output folder) with the flow: that is checked from every worker before any work, with one probe file.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.errors import ConfigError

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture

T = TypeVar("T")
RUNNER_ENV = "PIXELMILL_RUNNER"
DASK_CONFIG_ENV = "PIXELMILL_DASK_CONFIG"
RUNNERS = "threads, processes, dask, dask:PROFILE or a Dask scheduler address (tcp://HOST:8786)"


def runner_name(runner: str | None = None) -> str:
    """The runner asked for: the argument, else $PIXELMILL_RUNNER, else threads; checked, so a typo fails early."""
    name = (runner or os.environ.get(RUNNER_ENV) or "threads").strip()
    if name == "local":  # `--dask local`, the older spelling
        name = "dask"
    if name in ("threads", "processes", "dask") or name.startswith("dask:") or "://" in name:
        return name
    raise ConfigError(f"unknown runner {name!r}", f"use one of: {RUNNERS}")


def dask_profile(profile: str) -> dict:
    """The DaskTaskRunner arguments of one profile of the Dask settings file (deploy/dask.yaml)."""
    import yaml

    path = Path(os.environ.get(DASK_CONFIG_ENV) or "deploy/dask.yaml")
    if not path.is_file():
        raise ConfigError(f"runner dask:{profile}: no Dask settings file at {path}",
                          f"set {DASK_CONFIG_ENV} to a file like deploy/dask.yaml")
    profiles = yaml.safe_load(path.read_text()) or {}
    name = profiles.get("default") if profile == "default" else profile
    if not isinstance(profiles.get(name), dict):
        known = ", ".join(k for k in profiles if k != "default")
        raise ConfigError(f"runner dask:{profile}: no profile {name!r} in {path}", f"profiles there: {known}")
    return profiles[name]


def is_remote(name: str) -> bool:
    """Whether the runner's workers may be other machines, which then must share the workspace."""
    if "://" in name:
        return True
    if name.startswith("dask:"):
        profile = dask_profile(name.removeprefix("dask:"))
        return "address" in profile or profile.get("cluster_class", "distributed.LocalCluster") not in (
            "distributed.LocalCluster", "distributed.deploy.local.LocalCluster")
    return False


def task_runner_for(name: str, workers: int, workspace: str, window: int):
    """The task runner for a runner name; None for threads (the flow's own thread pool: in_window bounds it)."""
    if name == "threads":
        return None
    if name == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=window)
    if storage.normalize_url(workspace).startswith("memory://"):
        raise ConfigError("a memory:// workspace cannot be shared with Dask worker processes",
                          "use a folder or bucket as the workspace, or run on threads")
    from prefect_dask import DaskTaskRunner

    if name == "dask":
        # Worker processes must report to this process's Prefect API; without the URL each one would start
        # an embedded server of its own (measured: 20 s start-up at 1 worker, 55 s at 2).
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None, "env": {"PREFECT_API_URL": api_url()}})
    if name.startswith("dask:"):
        return DaskTaskRunner(**dask_profile(name.removeprefix("dask:")))
    return DaskTaskRunner(address=name)


@contextlib.contextmanager
def running_on(runner: str | None, workers: int, workspace: str, window: int, shared: Sequence[str] = ()):
    """Inside: the current flow's tasks are submitted to the chosen runner (started here, stopped on the way out).
    A remote cluster is first checked to see `workspace` and `shared` (the folders its shards write).

    Yields (runner name, slots): slots is what the runner can run at once (a Dask cluster's threads; None on
    threads and processes), so that a run given a cluster keeps all of it busy whatever its --workers says."""
    from prefect.context import FlowRunContext

    name = runner_name(runner)
    task_runner = task_runner_for(name, workers, workspace, window)
    if task_runner is None:
        yield name, None
        return
    context = FlowRunContext.get()
    with task_runner as started:
        client = getattr(started, "client", None)  # Dask's; a process pool has none
        remote = is_remote(name)
        if remote:
            check_shared(client, name, [workspace, *shared])
        slots = sum(client.nthreads().values()) if client is not None else None
        with api_for_workers(client if remote else None), context.model_copy(update={"task_runner": started}):
            yield name, slots


def check_shared(client, name: str, folders: Sequence[str]) -> None:
    """Refuse a cluster whose workers cannot read what this process writes under each folder: a local path on a
    remote cluster would otherwise have each worker write its shards to its own disk, and nothing would say so."""
    for folder in folders:
        probe = storage.join(folder, f".pixelmill-probe-{uuid.uuid4().hex}")
        token = uuid.uuid4().hex.encode()
        storage.write_bytes(probe, token)
        try:
            answers = client.run(_reads, probe)
        finally:
            storage.remove(probe)
        blind = {worker: answer for worker, answer in answers.items() if answer != token}
        if not answers or blind:
            worker, answer = next(iter(blind.items())) if blind else ("(none)", b"no workers")
            raise ConfigError(
                f"the Dask workers of {name} cannot see {folder} as this flow does ({len(blind)} of {len(answers)}; "
                f"{worker}: {answer.decode(errors='replace')[:200]})",
                "a remote cluster needs a workspace and outputs every worker shares: an s3:// bucket (with the same "
                "credentials on the workers) or a filesystem mounted at the same path")


def _reads(uri: str) -> bytes:
    try:
        return storage.read_bytes(uri)
    except Exception as exc:  # noqa: BLE001 - the answer is shown to the user as it is
        return f"{type(exc).__name__}: {getattr(exc, 'message', exc)}".encode()


def in_window(submit: Callable[[T], PrefectFuture], items: Iterable[T], window: int) -> Iterator[PrefectFuture]:
    """Submit `items` with at most `window` in flight, yielding each future as it completes.

    The bound is the flow's, not the task runner's, so it holds on any runner (a deployment's default thread
    pool, Dask): no more task runs show Running than do work, and finished shards free their memory.
    """
    from prefect.futures import as_completed

    items = iter(items)
    running = [submit(item) for item in itertools.islice(items, max(1, window))]
    while running:
        done = next(as_completed(running))
        running.remove(done)
        running.extend(submit(item) for item in itertools.islice(items, 1))
        yield done


def api_url() -> str:
    """The Prefect API this process talks to, starting the embedded server when none is configured."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return url
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the process-wide embedded server that flow runs use
    server.start()
    return server.api_url


@contextlib.contextmanager
def api_for_workers(cluster, url: str | None = None):
    """Inside: task runs on a remote Dask cluster's workers (`cluster`: a distributed Client or a scheduler
    address; None: nothing to do) report to this flow's Prefect API, which is checked from the workers first.
    Prefect 3.9 hands each task its flow's settings, the embedded server's URL included (older versions did not,
    and each worker started a temporary server of its own); the URL is set here all the same, and when the
    workers cannot reach it (the embedded server listens on 127.0.0.1 only) one warning says that a shared server
    is needed."""
    if cluster is None:
        yield
        return
    from distributed import Client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pixelmill.flows.console import server_is_up

    url = url or api_url()
    if isinstance(cluster, str):
        with Client(cluster, timeout=30) as client:
            answers = client.run(server_is_up, url, 2.0)
    else:
        answers = cluster.run(server_is_up, url, 2.0)
    if answers and all(answers.values()):
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
        return
    logging.getLogger("pixelmill.dask").warning(
        "the Dask workers cannot reach the Prefect API at %s: their shard task runs go to temporary servers of "
        "their own; to watch cluster work, run a shared Prefect server and set PREFECT_API_URL to it", url)
    yield
