"""A PostgreSQL server for tests, on a loopback port with a throwaway data folder: the database a production Prefect
server runs on. PostgreSQL refuses to run as root, so as root its commands run as the `postgres` user."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.seaweed import _free_port


def bin_dir() -> Path:
    """Debian keeps the server's programs off PATH, in /usr/lib/postgresql/VERSION/bin; .ci/run installs them."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/createdb"), key=lambda p: int(p.split("/")[4]))
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("createdb")  # another layout: every program on PATH
    if found and (Path(found).parent / "pg_ctl").exists():
        return Path(found).parent
    pytest.fail("PostgreSQL not found: `apt-get install postgresql` (.ci/run does it)")


class PostgresServer:
    def __init__(self):
        self.bin = bin_dir()
        self.port = _free_port()
        # Not under pytest's tmp folders: those are closed to other users, and the server runs as `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="pixelmill-pg-"))
        self.data = self.root / "data"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode:
            log = (self.root / "server.log").read_text(errors="replace")[-3000:] if (self.root / "server.log").exists() \
                else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        # A test database: durability off (fsync, synchronous commit) for speed; restarts still keep what was
        # committed, which is what a Prefect server restart needs.
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                  "-o", options, "start")

    def create_database(self, name: str) -> str:
        """A new database; returns the SQLAlchemy URL a Prefect server takes."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
