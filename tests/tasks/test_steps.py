"""The Prefect wrappers retry what a retry can fix, and nothing else (real Prefect task runs)."""

import pytest
from prefect import flow, task

from pixelmill.tasks import steps
from pixelmill.tasks.core.errors import ConfigError, StorageError

pytestmark = pytest.mark.usefixtures("prefect_server")


def failing_task(exc: Exception, calls: list):
    options = steps.SHARD_RETRIES | {"retry_delay_seconds": 0}  # the shard policy, without the waits

    @task(**options)
    def shard() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return len(calls)

    return shard


@pytest.mark.parametrize("exc,retried", [
    (ConnectionResetError("connection reset by peer"), True),
    (TimeoutError("read timed out"), True),
    (OSError("An error occurred (SlowDown) when calling the PutObject operation"), True),
    (ConfigError("invalid recipe", "fix it"), False),
    (StorageError("s3://nope does not exist", "check the bucket"), False),
    (ValueError("a bug, not an outage"), False),
])
def test_shard_tasks_retry_only_transient_failures(exc, retried):
    calls: list = []
    shard = failing_task(exc, calls)

    @flow
    def run() -> int:
        return shard()

    if retried:
        assert run() == 2 and len(calls) == 2
    else:
        with pytest.raises(type(exc)):
            run()
        assert len(calls) == 1
