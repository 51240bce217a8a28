"""Run leases: how a flow run that died without a word (kill -9, a lost machine) is told from one that still works.

Prefect marks a run Crashed only when its process lives to say so: a run killed with -9 stays `Running`
forever unless something else notices. So each ingest and crappify run keeps a lease in the workspace,

    {workspace}/runs/{stage}/{group}/{flow_run_id}.json      host, pid, the pid's start time, heartbeat

rewritten every HEARTBEAT_SECONDS, and the next run of the same stage and group (data set, or paired set)
judges the leases it finds (`gone_reason`):
- same host: the pid is not running, or now belongs to another process (its start time differs): gone;
- another host: no heartbeat for STALE_AFTER_SECONDS: gone;
- otherwise it may be a legitimately overlapping run (two options at once): left alone.
tasks/steps.py marks gone runs Crashed in Prefect. The zombie-flow automation in deploy/ does the same from
Prefect's own heartbeats, but only on a server that has it; this needs nothing but the workspace.

No Prefect here: the flow run id comes in as a string, and Prefect's states stay in tasks/steps.py.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.names import check_name

HEARTBEAT_SECONDS = 30.0
# Ten missed heartbeats: a run on another host is only judged by its heartbeat, and a storage outage
# (retried for PIXELMILL_STORAGE_RETRY_SECONDS, 120 s by default) or clock skew must not make it look dead.
STALE_AFTER_SECONDS = 300.0
# Names that only a writer in the middle of a write leaves behind: storage.write_bytes's temporary files
# and crappify's write probe. A killed writer leaves them forever.
TEMP_PREFIXES = (".tmp-", ".write-probe")
TEMP_MIN_AGE_SECONDS = 2.0
log = logging.getLogger("pixelmill.runs")


@dataclass(frozen=True)
class Lease:
    flow_run_id: str
    stage: str
    group: str
    host: str
    pid: int
    pid_started: str | None  # the process's start time (Linux: /proc), so a reused pid is not taken for it
    started_at: str  # ISO 8601, UTC
    heartbeat_at: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Lease:
        return cls(**json.loads(data))


def process_started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None without /proc or when it is a zombie or gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()  # the command name may hold spaces and ')'
    except (OSError, IndexError):
        return None
    state, started = fields[0], fields[19]  # stat fields 3 and 22
    return None if state in (b"Z", b"X") else started.decode()


def is_running(pid: int, started: str | None) -> bool:
    """Whether the process `pid` that started at `started` still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    if not os.path.exists("/proc/self/stat"):
        return True  # no way to tell a reused pid here
    now = process_started(pid)
    return now is not None and (started is None or now == started)


def new_lease(flow_run_id: str, stage: str, group: str, now: datetime | None = None) -> Lease:
    stamp = (now or datetime.now(UTC)).isoformat()
    pid = os.getpid()
    return Lease(flow_run_id, stage, group, socket.gethostname(), pid, process_started(pid), stamp, stamp)


def gone_reason(lease: Lease, now: datetime, host: str, running: Callable[[int, str | None], bool] = is_running,
                stale_after: float = STALE_AFTER_SECONDS) -> str | None:
    """Why the lease's run is certainly dead, or None when it may still be working."""
    if lease.host == host:
        return None if running(lease.pid, lease.pid_started) else f"its process {lease.pid} on {host} is gone"
    age = (now - datetime.fromisoformat(lease.heartbeat_at)).total_seconds()
    if age > stale_after:
        return f"no heartbeat from its process {lease.pid} on {lease.host} for {age:.0f} s"
    return None


def judge(leases: Iterable[Lease], me: str, now: datetime | None = None, host: str | None = None,
          running: Callable[[int, str | None], bool] = is_running) -> tuple[list[tuple[Lease, str]], list[Lease]]:
    """Other runs' leases split into (gone, with the reason) and (maybe alive); `me` is this run's id."""
    now, host = now or datetime.now(UTC), host or socket.gethostname()
    gone, alive = [], []
    for lease in leases:
        if lease.flow_run_id == me:
            continue
        reason = gone_reason(lease, now, host, running)
        if reason:
            gone.append((lease, reason))
        else:
            alive.append(lease)
    return gone, alive


def checked_group(stage: str, group: str) -> str:
    """A group becomes a folder name: the same check, and message, as the stage's own."""
    return check_name(group, {"ingest": "dataset name", "crappify": "paired set name", "apply": "model name"}
                      .get(stage, "group"))


def lease_uri(workspace: str, stage: str, group: str, flow_run_id: str) -> str:
    return storage.join(Layout.of(workspace).runs(stage, checked_group(stage, group)), f"{flow_run_id}.json")


def write_lease(workspace: str, lease: Lease) -> None:
    storage.write_bytes(lease_uri(workspace, lease.stage, lease.group, lease.flow_run_id), lease.to_json())


def remove_lease(workspace: str, lease: Lease) -> None:
    storage.remove(lease_uri(workspace, lease.stage, lease.group, lease.flow_run_id))


def read_leases(workspace: str, stage: str, group: str) -> list[Lease]:
    """The group's leases; one that cannot be read (removed meanwhile, another version's) is skipped."""
    folder = Layout.of(workspace).runs(stage, group)
    leases = []
    for name in storage.list_names(folder, ".json"):
        try:
            leases.append(Lease.from_json(storage.read_bytes(storage.join(folder, name))))
        except Exception as exc:  # a lease only helps: never fail a run over one
            log.warning("runs: skipped lease %s/%s: %s", folder, name, exc)
    return leases


def remove_temp_files(folders: Iterable[str], min_age: float = TEMP_MIN_AGE_SECONDS) -> int:
    """Remove what killed writers left under local folders (TEMP_PREFIXES); returns how many files went.

    Only while no other run writes there: the caller checks the leases first. `min_age` covers a run
    that starts while this one looks: a write takes milliseconds, so an older temporary file is dead.
    Object stores and memory:// write in one PUT and leave nothing.
    """
    removed, now = 0, time.time()
    for url in folders:
        url = storage.normalize_url(url)
        if not url.startswith("file://"):
            continue
        for directory, _, names in os.walk(storage.resolve(url)[1]):
            for name in names:
                path = os.path.join(directory, name)
                with contextlib.suppress(FileNotFoundError):
                    if name.startswith(TEMP_PREFIXES) and now - os.stat(path).st_mtime >= min_age:
                        os.remove(path)
                        removed += 1
    return removed


class Heartbeat:
    """Rewrites a lease every `every` seconds until `finished()` says the run is over, then removes it.

    A daemon thread, so it never keeps a process alive; at interpreter exit the lease of a finished run is
    removed too (the thread may not have looked yet). A failed write is logged and tried at the next beat:
    a lease only helps, the run's work must not fail over it.
    """

    def __init__(self, workspace: str, lease: Lease, finished: Callable[[], bool], every: float = HEARTBEAT_SECONDS,
                 poll: float = 0.5):
        self.workspace, self.lease, self.finished = workspace, lease, finished
        self.every, self.poll = every, poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.flow_run_id}", daemon=True)

    def start(self) -> Heartbeat:
        write_lease(self.workspace, self.lease)
        atexit.register(self._at_exit)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        last = datetime.now(UTC)
        while not self._stop.wait(self.poll):
            if self.finished():
                break
            now = datetime.now(UTC)
            if (now - last).total_seconds() >= self.every:
                last = now
                try:
                    self.lease = replace(self.lease, heartbeat_at=now.isoformat())
                    write_lease(self.workspace, self.lease)
                except Exception as exc:
                    log.warning("runs: heartbeat of %s not written: %s", self.lease.flow_run_id, exc)
        self._remove()
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        if self.finished():
            self._remove()

    def _remove(self) -> None:
        try:
            remove_lease(self.workspace, self.lease)
        except Exception as exc:
            log.warning("runs: lease of %s not removed: %s", self.lease.flow_run_id, exc)
