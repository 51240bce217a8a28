"""Where a bulk flow's shard tasks run: threads in this process, a Dask LocalCluster, or a Dask scheduler.

flows/stages.py `with_runner` chooses here for any bulk stage; a runner is fixed per flow call, so it is bound
before the call.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.errors import ConfigError

T = TypeVar("T")


def task_runner_for(dask: str | None, workers: int, workspace: str, threads: int):
    """`threads` shards at once in this process by default; `dask="local"` starts a LocalCluster of `workers`
    processes; else the address of a Dask scheduler."""
    if dask is None:
        return ThreadPoolTaskRunner(max_workers=threads)
    if storage.normalize_url(workspace).startswith("memory://"):
        raise ConfigError("a memory:// workspace cannot be shared with Dask worker processes",
                          "use a folder or bucket as the workspace, or run without --dask")
    from prefect_dask import DaskTaskRunner

    if dask == "local":
        # Worker processes must report to this process's Prefect API; without the URL each one would start
        # an embedded server of its own (measured: 20 s start-up at 1 worker, 55 s at 2).
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None, "env": {"PREFECT_API_URL": api_url()}})
    return DaskTaskRunner(address=dask)


def in_window(submit: Callable[[T], PrefectFuture], items: Iterable[T], window: int) -> Iterator[PrefectFuture]:
    """Submit `items` with at most `window` in flight, yielding each future as it completes.

    The bound is the flow's, not the task runner's, so it holds on any runner (a deployment's default thread
    pool, Dask): no more task runs show Running than do work, and finished shards free their memory.
    """
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
def api_for_workers(dask: str | None, url: str | None = None):
    """Inside: task runs on a remote Dask cluster's workers report to this flow's Prefect API, which is checked
    from the workers first. Prefect 3.9 hands each task its flow's settings, the embedded server's URL included
    (older versions did not, and each worker started a temporary server of its own); the URL is set here all
    the same, and when the workers cannot reach it (the embedded server listens on 127.0.0.1 only) one warning
    says that a shared server is needed."""
    if dask is None or dask == "local":  # a LocalCluster gets the URL in its workers' environment
        yield
        return
    from distributed import Client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pixelmill.flows.console import server_is_up

    url = url or api_url()
    with Client(dask, timeout=30) as client:
        answers = client.run(server_is_up, url, 2.0)
    if answers and all(answers.values()):
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
        return
    logging.getLogger("pixelmill.dask").warning(
        "the Dask workers cannot reach the Prefect API at %s: their shard task runs go to temporary servers of "
        "their own; to watch cluster work, run a shared Prefect server and set PREFECT_API_URL to it", url)
    yield
