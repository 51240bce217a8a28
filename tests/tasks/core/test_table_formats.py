"""The catalog's Parquet parts and Delta Lake under the same abuse (issue 18's table-format decision): writers that
commit at once, and writers and compactions killed with SIGKILL in the middle of a commit. Afterwards each table
reads with every committed row, each key once, and takes the next commit.

The writers are processes of bench/table_format.py (`--writer`): each commit is 4 rows, 3 of keys of its own and
one (`shared-{i}`) that every writer's i-th commit also has, as overlapping runs do. Delta's side uses delta-rs's
conditional commits: on S3 a PUT with If-None-Match (no lock, no DynamoDB since deltalake 1.0), which SeaweedFS
honours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog

REPO = Path(__file__).resolve().parents[3]
BENCH = REPO / "bench" / "table_format.py"
sys.path.insert(0, str(REPO / "bench"))
import table_format as tf  # noqa: E402

pytest.importorskip("deltalake")
FORMATS = ["parts", "delta"]


def start_writer(fmt: str, root: str, name: str, commits: int, kill_at: int | None = None) -> subprocess.Popen:
    cmd = [sys.executable, str(BENCH), "--writer", fmt, root, name, str(commits)]
    return subprocess.Popen(cmd + (["--kill-at", str(kill_at)] if kill_at else []), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read(fmt: str, root: str):
    """The group, each key once (parts: Catalog.read; delta: its current files, the same Arrow dedup)."""
    return Catalog(root).read(tf.TABLE, tf.MODEL) if fmt == "parts" else tf.delta_read(tf.delta_uri(root))


def raw_rows(fmt: str, root: str) -> int:
    """Rows on storage before dedup (what readers would see without it)."""
    if fmt == "parts":
        catalog = Catalog(root)
        return catalog._load(tf.TABLE, tf.MODEL, ["input_uri"])[1].num_rows
    return tf.delta_table(tf.delta_uri(root)).to_pyarrow_table(columns=["input_uri"]).num_rows


def expected_keys(writers: list[str], commits: dict[str, int]) -> list[str]:
    keys = {f"{w}-{i}-{j}" for w in writers for i in range(1, commits[w] + 1) for j in range(3)}
    keys |= {f"shared-{i}" for w in writers for i in range(1, commits[w] + 1)}
    return sorted(keys)


def new_table(fmt: str, root: str) -> None:
    if fmt == "delta":
        tf.delta_create(tf.delta_uri(root))


def compact(fmt: str, root: str) -> None:
    if fmt == "parts":
        Catalog(root).compact(tf.TABLE, tf.MODEL, max_small_parts=4)
    else:
        table = tf.delta_table(tf.delta_uri(root))
        table.optimize.compact()
        # a vacuum of 0 hours only here: no reader holds an older version in this test
        table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)


def concurrent_writers(fmt: str, root: str, writers: int, commits: int) -> None:
    """`writers` processes of `commits` commits each at once, while this process compacts in a loop."""
    new_table(fmt, root)
    names = [f"w{k}" for k in range(writers)]
    procs = [start_writer(fmt, root, name, commits) for name in names]
    stop, errors = threading.Event(), []

    def compactor():
        while not stop.is_set():
            try:
                compact(fmt, root)
            except Exception as exc:  # a Delta compaction that lost to a commit (a conflict) is a retry, not data lost
                if fmt != "delta" or "Commit" not in type(exc).__name__:
                    errors.append(exc)
                    return

    thread = threading.Thread(target=compactor)
    thread.start()
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        stop.set()
        thread.join()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert out.split() == [str(i) for i in range(1, commits + 1)]
    assert not errors, errors
    data = read(fmt, root)
    keys = data["input_uri"].to_pylist()
    assert sorted(keys) == expected_keys(names, dict.fromkeys(names, commits))  # no commit lost, no key twice
    if fmt == "delta":  # Delta keeps every row of every commit: no commit lost below the dedup either
        assert raw_rows(fmt, root) == writers * commits * 4
    compact(fmt, root)
    assert sorted(read(fmt, root)["input_uri"].to_pylist()) == sorted(keys)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_concurrent_writers_local(tmp_path, fmt):
    concurrent_writers(fmt, f"file://{tmp_path}/ws", writers=4, commits=50)


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.parametrize("fmt", FORMATS)
def test_concurrent_writers_s3(s3_bucket, fmt):
    concurrent_writers(fmt, f"s3://{s3_bucket}/ws", writers=4, commits=15)


def killed_writer(fmt: str, root: str) -> None:
    """A writer killed in its 3rd commit's middle: commits 1 and 2 read, once; the 3rd's rows do not; the next
    writer (a rerun of the same shards) commits on top, and every key reads once."""
    new_table(fmt, root)
    proc = start_writer(fmt, root, "w0", 5, kill_at=3)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert out.split() == ["1", "2"]
    assert sorted(read(fmt, root)["input_uri"].to_pylist()) == expected_keys(["w0"], {"w0": 2})
    # what the kill left: parts: the whole temporary file of the part it was renaming; delta: the data file of a
    # commit that never made the log. Neither is read.
    if fmt == "parts":
        folder = storage.join(Catalog(root).table_url(tf.TABLE), tf.MODEL)
        left = [n for n in os.listdir(storage.resolve(folder)[1]) if n.startswith(".tmp-")]
        assert len(left) == 1
    else:
        uri = tf.delta_uri(root)
        on_disk = {n for n in os.listdir(storage.resolve(uri)[1]) if n.endswith(".parquet")}
        live = {Path(u).name for u in tf.delta_table(uri).file_uris()}
        assert on_disk - live == {"part-w0-3.parquet"}
    rerun = start_writer(fmt, root, "w0", 5)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    compact(fmt, root)
    assert sorted(read(fmt, root)["input_uri"].to_pylist()) == expected_keys(["w0"], {"w0": 5})
    if fmt == "delta":
        # the rerun's commits 1 and 2 added their files' paths again: one file each in Delta's snapshot, so a
        # shard's rerun under the same file name is idempotent (it rewrote bytes that old versions name, though)
        assert raw_rows(fmt, root) == 5 * 4
        uri = tf.delta_uri(root)
        assert {n for n in os.listdir(storage.resolve(uri)[1]) if n.endswith(".parquet")} == \
            {Path(u).name for u in tf.delta_table(uri).file_uris()}  # vacuum took the orphan


@pytest.mark.parametrize("fmt", FORMATS)
def test_kill_9_in_the_middle_of_a_commit(tmp_path, fmt):
    killed_writer(fmt, f"file://{tmp_path}/ws")


def test_kill_9_in_the_middle_of_a_parts_compaction(tmp_path):
    """Killed after the merged part is written and before the parts it replaces are deleted (the fault point
    storage.write on `part-merged-`): every row reads once, and the next compaction finishes the job."""
    root = f"file://{tmp_path}/ws"
    for k in range(3):
        assert start_writer("parts", root, f"w{k}", 8).wait(timeout=300) == 0
    before = sorted(read("parts", root)["input_uri"].to_pylist())
    catalog = Catalog(root)
    parts = len(catalog.part_uris(tf.TABLE, tf.MODEL))
    code = f"from pixelmill.tasks.core.catalog import Catalog; Catalog({root!r}).compact('predictions', 'bench', " \
           "max_small_parts=4)"
    env = os.environ | {"PIXELMILL_FAULT": "storage.write:1", "PIXELMILL_FAULT_WHERE": "part-merged-"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    uris = catalog.part_uris(tf.TABLE, tf.MODEL)
    assert len(uris) == parts + 1 and any("part-merged-" in u for u in uris)  # written, nothing deleted
    assert sorted(read("parts", root)["input_uri"].to_pylist()) == before
    catalog.compact(tf.TABLE, tf.MODEL, max_small_parts=4)
    assert len(catalog.part_uris(tf.TABLE, tf.MODEL)) == 1
    assert sorted(read("parts", root)["input_uri"].to_pylist()) == before


def test_kill_9_in_the_middle_of_a_delta_compaction(tmp_path):
    """delta-rs's optimize writes its files, then one log entry that adds them and removes the old ones; it has no
    hook of ours, so it is killed at a spread of moments from its start (a kill after its writes and before its
    commit leaves unreferenced files, like the killed writer above). After each kill the table reads every row once,
    and the next optimize and vacuum finish."""
    root = f"file://{tmp_path}/ws"
    new_table("delta", root)
    for k in range(3):
        assert start_writer("delta", root, f"w{k}", 30).wait(timeout=300) == 0
    before = sorted(read("delta", root)["input_uri"].to_pylist())
    uri = tf.delta_uri(root)
    code = f"import sys; sys.path.insert(0, {str(REPO / 'bench')!r}); import table_format as tf; " \
           f"t = tf.delta_table({uri!r}); t.optimize.compact(); print('done')"
    outcomes = []
    for delay in (0.2, 0.5, 0.8, 1.1, 1.4, 1.7, 2.0, 2.5):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            proc.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        outcomes.append(proc.returncode)
        assert sorted(read("delta", root)["input_uri"].to_pylist()) == before
        if proc.returncode == 0:  # it finished: more small files for the next one
            assert start_writer("delta", root, f"x{delay}", 20).wait(timeout=300) == 0
            before = sorted(read("delta", root)["input_uri"].to_pylist())
    assert -signal.SIGKILL in outcomes
    compact("delta", root)
    assert sorted(read("delta", root)["input_uri"].to_pylist()) == before
    assert len(tf.delta_table(uri).file_uris()) == 1
