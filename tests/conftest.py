"""Shared fixtures: one Prefect test server for the session's in-process flows, one real Prefect server for its
subprocesses, a real S3 server (SeaweedFS), a real PostgreSQL server, sample images."""

from __future__ import annotations

import os

# Before Prefect is imported anywhere: the embedded server needs more than the default 20 s here.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import uuid

import pytest

from pixelmill.tasks.prep.samples import write_sample_photos
from tests.seaweed import SeaweedServer


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API (temporary database) for every flow test in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real `prefect server start` on a free port (a private PREFECT_HOME) for every test that runs `pixelmill`
    in a subprocess: `prefect_api.env()` points a child at it, so that no command starts Prefect's embedded server
    (10-15 s each on 2 cores). Tests that look at the server filter by their own ids: others share it."""
    from tests.faults.driver import PrefectServer

    server = PrefectServer(tmp_path_factory.mktemp("prefect-api"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (the Debian package .ci/run installs) on a loopback port, for tests that need
    a database: a Prefect server as production runs it."""
    from tests.postgres import PostgresServer

    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS with its S3 gateway on free loopback ports; the standard AWS variables point at it."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    saved = {k: os.environ.get(k) for k in server.environ()}
    os.environ.update(server.environ())
    try:
        yield server.endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop(kill=True)  # its data is thrown away: SIGTERM waits 10 s for a graceful stop here


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket name on the S3 server."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return name


@pytest.fixture
def memory_url():
    """A unique memory:// folder, removed afterwards."""
    import fsspec

    root = f"memory://pixelmill-test-{uuid.uuid4().hex[:12]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture(scope="session")
def sample_folder(tmp_path_factory):
    """The built-in sample photographs (good, odd-mode and broken files) in a local folder."""
    root = tmp_path_factory.mktemp("samples")
    expected = write_sample_photos(str(root))
    return root, expected
