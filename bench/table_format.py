"""Table format benchmark (issue 18, deliverable 2): the catalog's Parquet parts against Delta Lake (`deltalake`).

    python bench/table_format.py                       # 10k and 100k rows, local disk
    python bench/table_format.py --s3                  # the same on a SeaweedFS S3 server started for the run
    python bench/table_format.py --sizes 1000000       # a million rows

One `predictions` group (bench/catalog.py's synthetic rows) of N rows in the layout a history of shard commits
leaves, 64 rows a commit (apply's default shard), in each format:

  parts  tasks/core/catalog.py: a part per shard commit (`part-<hash>.parquet`), merging compaction, Arrow dedup
         on read (each key once, the best row by the table's ranking)
  delta  one Delta table per group (`delta/predictions/bench`): a data file per shard commit. The history's data
         files are written as the shards would write them and committed 100 files a commit (a million rows as
         15,625 single-file commits would take hours to build here); what a commit costs at that size is
         `append_100` (100 real `write_deltalake` appends). Delta has no key: each key once is the same Arrow
         dedup on read (`catalog.best_rows`), or a MERGE per shard commit (`merge_shard`, measured)

Each measurement runs in a fresh child process (peak RSS is its VmHWM):
  read_fragmented   the whole group, each key once, before any compaction
  append_100        100 shard commits of 64 rows, one after the other (seconds for all 100)
  merge_shard       (delta) one shard of 64 rows (32 keys already there, 32 new) committed by MERGE on the key
  compact           parts: `Catalog.compact` (merges small parts); delta: `optimize.compact` + `vacuum(0 h)`
  read_compacted    the whole group, each key once, after the compaction
  compact_nochange  a compaction with nothing to do (parts: a listing against the settled marker; delta: the log)
`files` counts what is on storage after each phase (parts; delta: data files and log entries).

`--writer` is the process that tests/tasks/core/test_table_formats.py starts to check concurrent writers and
kill -9 in the middle of a commit against both formats (see `writer`). Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_benchmark, s3_for_bench  # noqa: E402
from catalog import MODEL, PREDICTION_PART_ROWS, predictions_table, write_parts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TABLE = "predictions"
KEY = ("model", "model_version", "output_root", "input_uri")
COMMIT_FILES = 100  # history files per Delta commit (see the docstring)


# ---- Delta Lake: one table per group ---------------------------------------------------------------------------

def delta_uri(root: str, group: str = MODEL) -> str:
    return f"{root.rstrip('/')}/delta/{TABLE}/{group}"


def delta_options(uri: str) -> dict | None:
    """delta-rs's S3 settings from the standard AWS variables (conditional PUTs, no lock: delta-rs >= 1.0)."""
    if not uri.startswith("s3://"):
        return None
    return {"AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"], "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]}


def delta_table(uri: str):
    from deltalake import DeltaTable

    return DeltaTable(uri.removeprefix("file://"), storage_options=delta_options(uri))


def delta_create(uri: str) -> None:
    from deltalake import write_deltalake

    from pixelmill.tasks.core.tables import PREDICTIONS

    write_deltalake(uri.removeprefix("file://"), PREDICTIONS.empty_table(), mode="append",
                    storage_options=delta_options(uri))


def delta_write_files(uri: str, data, per_file: int, names: list[str]) -> list:
    """Data files of `per_file` rows into the table's folder, as shard writers leave them before their commit;
    returns their add actions (not committed)."""
    from concurrent.futures import ThreadPoolExecutor

    from deltalake.transaction import AddAction

    from pixelmill.tasks.core import storage
    from pixelmill.tasks.core.catalog import to_parquet_bytes

    def one(k: int) -> AddAction:
        rows = data.slice(k * per_file, per_file)
        body = to_parquet_bytes(rows)
        storage.write_bytes(storage.join(uri, names[k]), body)
        return AddAction(names[k], len(body), {}, int(time.time() * 1000), True,
                         json.dumps({"numRecords": rows.num_rows}))

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(len(names))))


def delta_commit(uri: str, actions: list) -> None:
    from pixelmill.tasks.core.tables import PREDICTIONS

    delta_table(uri).create_write_transaction(actions, mode="append", schema=PREDICTIONS)


def delta_history(uri: str, n: int, per_part: int) -> int:
    """N rows as data files of `per_part` rows, committed COMMIT_FILES files a commit; returns the files."""
    delta_create(uri)
    block = COMMIT_FILES * per_part
    files = 0
    for offset in range(0, n, block):
        rows = min(block, n - offset)
        data = predictions_table(offset, rows, offset // per_part, per_part)
        names = [f"part-{uuid.uuid4().hex}.parquet" for _ in range(0, rows, per_part)]
        delta_commit(uri, delta_write_files(uri, data, per_part, names))
        files += len(names)
    return files


def delta_read(uri: str):
    """The group, each key once (the catalog's Arrow dedup over Delta's current files)."""
    from pixelmill.tasks.core.catalog import best_rows

    data = delta_table(uri).to_pyarrow_table()
    keep = best_rows(data, TABLE)
    return data if keep is None else data.take(keep)


def delta_files(uri: str) -> dict:
    from pixelmill.tasks.core import storage

    fs, path = storage.resolve(uri)
    fs.invalidate_cache()
    log = [p for p in fs.ls(path + "/_delta_log") if p.endswith(".json")]
    return {"data_files_live": len(delta_table(uri).file_uris()),
            "data_files_on_storage": sum(1 for p in fs.ls(path) if p.endswith(".parquet")), "log_entries": len(log)}


# ---- one measurement, in a child process ------------------------------------------------------------------------

def measure(fmt: str, name: str, root: str, n: int) -> dict:
    from pixelmill.tasks.core.catalog import Catalog

    catalog, uri = Catalog(root), delta_uri(root)
    out: dict = {}
    started = time.perf_counter()
    if name in ("read_fragmented", "read_compacted"):
        data = catalog.read(TABLE, MODEL) if fmt == "parts" else delta_read(uri)
        out["rows"] = data.num_rows
    elif name == "append_100":
        for k in range(100):
            data = predictions_table(n + k * PREDICTION_PART_ROWS, PREDICTION_PART_ROWS, 10**6 + k, 10**9)
            if fmt == "parts":
                catalog.write_part(TABLE, MODEL, f"new-{k}", data)
            else:
                from deltalake import write_deltalake

                write_deltalake(uri.removeprefix("file://"), data, mode="append", storage_options=delta_options(uri))
    elif name == "merge_shard":  # 32 rows of keys already there (a rerun's), 32 new
        data = predictions_table(n + 100 * PREDICTION_PART_ROWS - 32, PREDICTION_PART_ROWS, 2 * 10**6, 10**9)
        on = " AND ".join(f"t.{c} = s.{c}" for c in KEY)
        out["metrics"] = {k: v for k, v in delta_table(uri).merge(data, on, source_alias="s", target_alias="t")
                          .when_matched_update_all().when_not_matched_insert_all().execute().items()
                          if k in ("num_target_rows_updated", "num_target_rows_inserted", "num_target_files_added",
                                   "num_target_files_removed")}
    elif name in ("compact", "compact_nochange"):
        if fmt == "parts":
            out["removed"] = catalog.compact(TABLE, MODEL)
        else:
            table = delta_table(uri)
            result = table.optimize.compact()
            out["optimize"] = {k: result[k] for k in ("numFilesAdded", "numFilesRemoved")}
            out["vacuumed"] = len(table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False))
    else:
        raise ValueError(f"unknown measurement {name!r}")
    out["seconds"] = round(time.perf_counter() - started, 3)
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    out["peak_rss_mib"] = round(int(status["VmHWM"].split()[0]) / 1024)
    return out


def child(fmt: str, name: str, root: str, n: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps([fmt, name, root, n])],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{fmt} {name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {fmt} {name}: {result}", file=sys.stderr, flush=True)
    return result


def one_size(n: int, root: str) -> dict:
    from pixelmill.tasks.core.catalog import Catalog

    catalog = Catalog(root)
    print(f"{n} rows in {root}", file=sys.stderr, flush=True)
    result: dict = {}
    for fmt in ("parts", "delta"):
        started = time.perf_counter()
        if fmt == "parts":
            files = write_parts(root, TABLE, MODEL, predictions_table, 0, n, PREDICTION_PART_ROWS)
        else:
            files = delta_history(delta_uri(root), n, PREDICTION_PART_ROWS)
        r: dict = {"generate_s": round(time.perf_counter() - started, 2), "files_written": files}
        for name in ("read_fragmented", "append_100", *(("merge_shard",) if fmt == "delta" else ()), "compact",
                     "read_compacted", "compact_nochange"):
            r[name] = child(fmt, name, root, n)
            if name == "compact":
                r["files_after_compact"] = len(catalog.part_uris(TABLE, MODEL)) if fmt == "parts" else \
                    delta_files(delta_uri(root))
        result[fmt] = r
    return result


def run(workdir: Path, args) -> dict:
    import deltalake

    with s3_for_bench(workdir, args.s3):
        sizes = {n: one_size(n, f"s3://bench/tf-{n}" if args.s3 else f"file://{workdir}/tf-{n}") for n in args.sizes}
    return {"store": "s3 (SeaweedFS)" if args.s3 else "local disk", "deltalake": deltalake.__version__,
            "sizes": sizes}


# ---- a writer process, for the concurrency and kill -9 tests -----------------------------------------------------

def writer(fmt: str, root: str, name: str, commits: int, kill_at: int | None) -> None:
    """`commits` shard commits of 4 rows each: keys `{name}-{i}-{j}` (its own) and `shared-{i}` (every writer's
    i-th commit has it: overlapping runs). With kill_at=K the K-th commit is killed in its middle (SIGKILL): for
    parts after the part's bytes are written and before the rename that makes them the part; for delta after the
    data file is written and before the log entry that adds it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pixelmill.tasks.core.catalog import Catalog

    if fmt == "parts" and kill_at is not None:
        real, seen = os.replace, [0]

        def replace(src, dst, *a, **k):  # write_bytes: the temporary file is whole, the rename is the commit
            if str(dst).endswith(".parquet"):
                seen[0] += 1
                if seen[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst, *a, **k)

        os.replace = replace
    for i in range(1, commits + 1):
        data = predictions_table(0, 4, 10**6 * i, 10**9)
        keys = [f"{name}-{i}-{j}" for j in range(3)] + [f"shared-{i}"]
        data = data.set_column(data.schema.get_field_index("input_uri"), "input_uri", pa.array(keys))
        data = data.set_column(data.schema.get_field_index("run_id"), "run_id", pc.cast(pa.array([name] * 4),
                                                                                         pa.string()))
        if fmt == "parts":
            Catalog(root).write_part(TABLE, MODEL, f"{name}-{i}", data)
        else:
            uri = delta_uri(root)
            actions = delta_write_files(uri, data, 4, [f"part-{name}-{i}.parquet"])
            if i == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            for attempt in range(50):  # a commit that lost the race for its version is tried again by delta-rs;
                try:  # one that runs out of its own tries (many writers at once) is tried again here
                    delta_commit(uri, actions)
                    break
                except Exception as exc:  # deltalake.exceptions.CommitFailedError
                    if "CommitFailed" not in type(exc).__name__ or attempt == 49:
                        raise
        print(i, flush=True)  # committed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",") if v], default=[10_000, 100_000])
    parser.add_argument("--s3", action="store_true", help="on a SeaweedFS S3 server started for the run")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--writer", nargs=4, metavar=("FORMAT", "ROOT", "NAME", "COMMITS"), default=None,
                        help="run a writer process (the concurrency and kill -9 tests)")
    parser.add_argument("--kill-at", type=int, default=None, help="with --writer: kill -9 in that commit's middle")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(*json.loads(args.child))))
        return
    if args.writer:
        fmt, root, name, commits = args.writer
        writer(fmt, root, name, int(commits), args.kill_at)
        return
    run_benchmark("table_format", Path(args.workdir) if args.workdir else None, lambda workdir: run(workdir, args))


if __name__ == "__main__":
    main()
