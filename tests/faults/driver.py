"""The fault suite's driver: the real `pixelmill` CLI in its own process group, armed to SIGKILL itself at a
deterministic fault point (tasks/core/faults.py: PIXELMILL_FAULT=point:N), and audits that count what a run left
on storage (rows, duplicates, missing rows, orphan and temporary files)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pixelmill.tasks.core import runs
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.tables import TABLES

PIXELMILL = str(Path(sys.executable).parent / "pixelmill")
PREFECT = str(Path(sys.executable).parent / "prefect")
# What each test reports in the terminal summary (tests/faults/conftest.py): runs killed, rows checked, ...
COUNTS: dict[str, Counter] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """This environment minus any Prefect or pixelmill setting that would point a child somewhere else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PIXELMILL_", "AWS_"))}
    return env | {"PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                  "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"} | extra


class PrefectServer:
    """`prefect server start` on a free port with a private PREFECT_HOME: one for the suite, so that each CLI
    call does not start the embedded server (10-15 s on 2 cores)."""

    def __init__(self, home: Path, database: str | None = None):
        self.home = home
        self.url = f"http://127.0.0.1:{free_port()}/api"
        self.proc: subprocess.Popen | None = None
        # None: SQLite in PREFECT_HOME; else a SQLAlchemy URL (PostgreSQL, as production runs it)
        self.database = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": database} if database else {}

    def start(self, timeout: float = 120) -> None:
        import httpx

        port = self.url.rsplit(":", 1)[1].split("/")[0]
        self.log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port],
                                     env=clean_env(self.home, **self.database), stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"Prefect server did not start; see {self.home / 'server.log'}")
            time.sleep(0.5)

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(self.home, PREFECT_API_URL=self.url, **extra)

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, signal.SIGTERM, timeout=5)  # then SIGKILL: a test server keeps nothing
            self.proc = None
            self.log.close()


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 15) -> None:
    """Signal the process group and wait until every process in it is gone (forkserver and pool workers too)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process group {proc.pid} outlived SIGKILL")


@dataclass
class Cli:
    """One `pixelmill --verbose` command (Prefect's logs in the log file) in its own process group (a session)."""

    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen = field(init=False)

    def __post_init__(self):
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen([PIXELMILL, "--verbose", *self.args], env=self.env, stdout=self._out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout)
        finally:
            kill_group(self.proc)  # also what the CLI may have left behind (a forkserver)
            self._out.close()
        return code, self.log.read_text(errors="replace")


def fault_env(env: dict[str, str], fault: str, where: str = "", group: bool = False, hold: str = "") -> dict[str, str]:
    """`env` armed with a fault point (tasks/core/faults.py): PIXELMILL_FAULT=point:N and its options."""
    return env | {"PIXELMILL_FAULT": fault} | ({"PIXELMILL_FAULT_WHERE": where} if where else {}) \
        | ({"PIXELMILL_FAULT_GROUP": "1"} if group else {}) | ({"PIXELMILL_FAULT_HOLD": hold} if hold else {})


def run_to_fault(args: list[str], env: dict[str, str], log: Path, fault: str, where: str = "", group: bool = False,
                 timeout: float = 300) -> int:
    """Run the command armed to SIGKILL itself (with `group`: its whole process group) at the fault point; it must
    die there, not end. Returns the killed command's pid (the one its lease names)."""
    cli = Cli(args, fault_env(env, fault, where, group), log)
    code, out = cli.wait(timeout)
    assert code == -signal.SIGKILL, f"`pixelmill {' '.join(args)}` with {fault} {where} ended with {code} " \
                                    f"instead of dying at its fault point:\n{out[-3000:]}"
    return cli.proc.pid


def run_cli(args: list[str], env: dict[str, str], log: Path, timeout: float = 300) -> tuple[int, str]:
    return Cli(args, env, log).wait(timeout)


# ---------------------------------------------------------------- what is on storage


def local(ws: str | Path) -> Path:
    return Path(str(ws).removeprefix("file://"))


def committed_rows(ws: str | Path, table: str, group: str) -> int:
    """Rows in the group's parts now on disk (parts are replaced atomically; one may vanish while we count)."""
    total = 0
    for part in (local(ws) / "catalog" / table / group).glob("part-*.parquet"):
        with contextlib.suppress(FileNotFoundError, OSError, pa.ArrowInvalid):
            total += pq.read_metadata(part).num_rows
    return total


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def temp_files(ws: str | Path) -> list[Path]:
    """What a killed writer leaves: storage.write_bytes's temporary files and crappify's write probe."""
    return [p for p in files_under(local(ws)) if p.name.startswith(runs.TEMP_PREFIXES)]


def raw_rows(ws: str | Path, table: str, group: str) -> list[dict]:
    """Every row in every part on disk, not deduplicated as Catalog.read does: what storage holds."""
    return [row for _, part in Catalog(str(ws)).read_parts(table, group) for row in part.to_pylist()]


def duplicates(rows: list[dict], table: str) -> int:
    key_cols = TABLES[table].key
    keys = Counter(tuple(r[c] for c in key_cols) for r in rows)
    return sum(n - 1 for n in keys.values())


def leases(ws: str | Path, stage: str, group: str) -> list[runs.Lease]:
    return runs.read_leases(str(ws), stage, group)


def flow_run_of(ws: str | Path, stage: str, group: str, pid: int) -> str | None:
    """The flow run id that the CLI process `pid` runs, from its lease (None before it is written)."""
    return next((lease.flow_run_id for lease in leases(ws, stage, group) if lease.pid == pid), None)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under a folder."""
    return {str(p.relative_to(folder)): sha(p) for p in files_under(folder)}


def output_digest(data: bytes) -> str:
    """A digest of an apply output as any run would write it: its full-depth pixels, alpha and provenance, without
    the run id (each output carries the id of the run that wrote it, so a rerun's bytes differ there and only
    there)."""
    from pixelmill.tasks.core.imageio import read_picture
    from pixelmill.tasks.core.metadata import provenance_of

    pic = read_picture(data)
    fields = {k: v for k, v in provenance_of(data).items() if k != "run_id"}
    assert fields, "an output without provenance"
    h = hashlib.sha256(pic.pixels.tobytes() + (b"" if pic.alpha is None else pic.alpha.tobytes()))
    h.update(repr(sorted(fields.items())).encode())
    return h.hexdigest()


def output_tree(folder: Path) -> dict[str, str]:
    """Relative path -> output_digest of every apply output under a folder."""
    return {str(p.relative_to(folder)): output_digest(p.read_bytes()) for p in files_under(folder)}


def snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
    """Each file's (inode, mtime): storage.write_bytes replaces a file by renaming a new one over it."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files_under(folder)}


def written_since(folder: Path, before: dict[Path, tuple[int, int]]) -> set[Path]:
    """Files under `folder` written (new or replaced) since the snapshot `before`."""
    return {p for p, ident in snapshot(folder).items() if before.get(p) != ident}


def part_names(ws: str | Path, table: str, group: str) -> set[str]:
    return {p.name for p in (local(ws) / "catalog" / table / group).glob("part-*.parquet")}


def named_by_rows(ws: str | Path, table: str, group: str, columns: tuple[str, ...]) -> set[Path]:
    """The files that the group's committed rows (every part on storage) name in `columns`."""
    return {local(r[c]) for r in raw_rows(ws, table, group) for c in columns if r.get(c)}


IMAGE_FIELDS = ("dataset", "uri", "sha256", "bytes", "width", "height", "format", "mode", "status", "error",
                "split", "mask_uri", "duplicate_of", "source_version")
PAIR_FIELDS = ("pair_id", "set_name", "dataset", "image_uri", "image_sha256", "split", "recipe", "recipe_hash",
               "seed", "params", "hr_uri", "lr_uri", "mask_uri", "hr_width", "hr_height", "lr_width", "lr_height",
               "status", "error", "hr_kind", "hr_sha256", "hr_crop")


def rows_by_key(ws: str | Path, table: str, group: str, fields: tuple[str, ...]) -> dict[tuple, dict]:
    """Catalog.read's rows (one per key), minus the timestamps, with workspace URLs made relative."""
    root = Catalog(str(ws)).workspace
    key_cols = TABLES[table].key
    return {tuple(r[c] for c in key_cols): {f: (r[f].replace(root, "WS") if isinstance(r[f], str) else r[f])
                                            for f in fields}
            for r in Catalog(str(ws)).read(table, group).to_pylist()}


def audit_images(ws: str | Path, dataset: str, expected_uris: set[str]) -> Counter:
    """Counts that must be 0 after any number of kills and a rerun, and the rows checked."""
    stored = raw_rows(ws, "images", dataset)
    read = Catalog(str(ws)).read("images", dataset).to_pylist()
    uris = Counter(r["uri"] for r in read)
    return Counter(rows_checked=len(stored), duplicates_on_storage=duplicates(stored, "images"),
                   duplicates_read=sum(n - 1 for n in uris.values()), missing=len(expected_uris - set(uris)),
                   unexpected=len(set(uris) - expected_uris), temp_files=len(temp_files(ws)))


def audit_pairs(ws: str | Path, set_name: str, expected_pairs: int) -> Counter:
    """Storage and catalog agree: every file under the set's folder belongs to exactly one ok pair row."""
    stored = raw_rows(ws, "pairs", set_name)
    read = Catalog(str(ws)).read("pairs", set_name).to_pylist()
    ok = [r for r in read if r["status"] == "ok"]
    # the files a row names in the set: its LR, mask and HR copy (an HR that is the source is not the set's file)
    referenced = Counter(local(u) for r in ok
                         for u in (r["lr_uri"], r["mask_uri"], None if r["hr_kind"] == "source" else r["hr_uri"]) if u)
    on_disk = set(files_under(local(ws) / "datasets" / set_name))
    return Counter(rows_checked=len(stored), duplicates_on_storage=duplicates(stored, "pairs"),
                   duplicates_read=duplicates(read, "pairs"), missing=expected_pairs - len(ok),
                   error_rows=len(read) - len(ok), orphans=len(on_disk - set(referenced)),
                   shared_files=sum(n - 1 for n in referenced.values()),
                   files_missing=len(set(referenced) - on_disk), temp_files=len(temp_files(ws)))


PREDICTION_FIELDS = ("input_uri", "input_sha256", "input_bytes", "model", "model_version", "task", "input_width",
                     "input_height", "output_width", "output_height", "tiles", "status", "error")


def audit_predictions(ws: str | Path, model: str, output: Path, expected_inputs: set[str]) -> Counter:
    """One row per input, and every file under the output folder named by exactly one ok row."""
    stored = raw_rows(ws, "predictions", model)
    read = Catalog(str(ws)).read("predictions", model).to_pylist()
    referenced = Counter(local(u) for r in read if r["status"] == "ok" for u in (r["output_uri"], r["overlay_uri"]) if u)
    on_disk = set(files_under(output))
    inputs = Counter(r["input_uri"] for r in read)
    return Counter(rows_checked=len(stored), duplicates_on_storage=duplicates(stored, "predictions"),
                   duplicates_read=sum(n - 1 for n in inputs.values()), missing=len(expected_inputs - set(inputs)),
                   unexpected=len(set(inputs) - expected_inputs), orphans=len(on_disk - set(referenced)),
                   shared_files=sum(n - 1 for n in referenced.values()), files_missing=len(set(referenced) - on_disk),
                   temp_files=len(temp_files(ws)) + len([p for p in on_disk if p.name.startswith(runs.TEMP_PREFIXES)]))


def record(test: str, **counts: int) -> None:
    COUNTS.setdefault(test, Counter()).update(counts)
