"""flows/runners.py on a real Prefect server: the flow's own bound on tasks in flight."""

import threading
import time

import pytest
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from pixelmill.flows.runners import in_window

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_in_window_keeps_at_most_window_tasks_running_and_yields_each_once():
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    @task
    def work(i: int) -> int:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05 + 0.02 * (i % 3))  # uneven: completions come out of order
        with lock:
            state["now"] -= 1
        return i

    @flow(task_runner=ThreadPoolTaskRunner())  # unbounded: only in_window limits it
    def windowed() -> list[int]:
        return [f.result() for f in in_window(work.submit, range(12), 3)]

    done = windowed()
    assert sorted(done) == list(range(12))
    assert state["most"] == 3  # full, never over


def test_in_window_with_no_items_yields_nothing():
    @flow
    def empty() -> list:
        return list(in_window(lambda i: pytest.fail("nothing to submit"), [], 4))

    assert empty() == []
