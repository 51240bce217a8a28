"""Catalog benchmark: what a nightly run pays for a catalog's history, at 10k, 100k and 1M rows.

    python bench/catalog.py                      # 10k and 100k rows, local disk
    python bench/catalog.py --sizes 10000,100000,1000000
    python bench/catalog.py --quick              # 2k rows: a smoke run
    python bench/catalog.py --s3                 # the same on a SeaweedFS S3 server started for the run

For each size, one workspace holds an `images` group (data set `bench`) and a `predictions` group (model
`bench`, version v1) of that many rows, in the layout a real history leaves: a part per shard (100 rows per part
for images, 64 for predictions, ingest's and apply's default shard sizes), parts named by hashes, each night's
rows a second newer than the last night's, 1% of the images duplicates of another file's content. Parts are made
with pyarrow directly (a million rows in seconds). Then, each in a fresh child process (its peak RSS is VmHWM):

  fragmented_*   before any merging compaction: what the first nightly run after an upgrade pays
    ingest_plan  read the catalog's versions (`existing_versions`) and plan over a listing with nothing new
    apply_plan   `output_history` and `plan_apply` over a listing where all but 1,000 inputs are done
    show_images, show_predictions: `catalog show` (the read and the summary it prints)
  compact_images, compact_predictions: the merging compaction of the fragmented groups
  then, on the compacted layout (what every later night sees):
    ingest_nochange   existing_versions + plan_ingest (listing: nothing new) + finalize_dataset
    ingest_nochange_settled   the same the night after: finalize finds the data set as it left it (a listing)
    ingest_new1000    the same with 1,000 new files (10 shard parts written as ingest_shard would, not timed)
    apply_plan        as above
    show_images, show_predictions
    compact_predictions_again: a compaction after an apply run wrote 16 new parts of 64 rows
    compact_predictions_settled: a compaction with nothing to do (first_s), then the next one (total_s)

With `--baseline-src DIR` (an older checkout: `git archive HEAD tasks flows models | tar -x -C DIR`), that code
runs ingest_nochange, apply_plan and the shows on the fragmented layout too (`baseline_fragmented`): what a
nightly run cost before, in the same run (at 1M rows it takes minutes and GBs: the Python finalize holds every
row as a dict).

The listing is synthetic (FileInfo/ApplyItem objects made in Python); its own cost (`listing_s`: making and
iterating it) is measured separately in each child and is part of the plan's seconds. `catalog_s` is what the
catalog side costs: reading it (`existing_versions_s`, `output_history_s`), matching the listing against it
(`match_s`: the planners' Arrow joins and look-ups, timed where the planner calls them; 0 with code that has
none) and finalize; `loop_s` is the rest of the plan's seconds: the planner's own per-file loop over the
listing (classifying each file, turning the listing into Arrow columns, making the objects of the files to do).

Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_benchmark, s3_for_bench  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASET, MODEL, VERSION = "bench", "bench", "v1"
INPUT_ROOT, OUTPUT_ROOT = "s3://archive", "s3://restored/out"
IMAGE_PART_ROWS, PREDICTION_PART_ROWS = 100, 64
NEW = 1000
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


# ---- synthetic history ---------------------------------------------------------------------------------------

def _mix(idx, salt: int):
    """splitmix64 of (index, salt): a random-looking 64-bit word per file that does not depend on which files
    were generated with it."""
    import numpy as np

    with np.errstate(over="ignore"):
        z = idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64((salt * 0x632BE59BD9B4E019 + 1) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _hex_strings(idx, words: int, salt: int):
    """A hex string of 16 * words characters per index, as one Arrow array (no Python strings)."""
    import numpy as np
    import pyarrow as pa

    n = len(idx)
    raw = np.stack([_mix(idx, salt * 16 + w) for w in range(words)], axis=1).view(np.uint8)  # (n, 8 * words)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    chars = np.empty((n, 16 * words), dtype=np.uint8)
    chars[:, 0::2], chars[:, 1::2] = digits[raw >> 4], digits[raw & 15]
    offsets = np.arange(0, 16 * words * (n + 1), 16 * words, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def _padded(values, width: int):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), width, "0")


def rels(start: int, n: int):
    """Input names relative to INPUT_ROOT: photos/0001/img0001234.jpg, a thousand per folder."""
    import numpy as np
    import pyarrow.compute as pc

    idx = np.arange(start, start + n)
    return pc.binary_join_element_wise("photos/", _padded(idx // 1000, 4), "/img", _padded(idx, 7), ".jpg", "")


def file_facts(start: int, n: int) -> dict:
    """What the listing and the catalog agree on for files start..start+n: uri, rel, bytes, version, sha256.
    A file's facts depend on its index alone, not on which files were generated with it."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    idx = np.arange(start, start + n)
    rel = rels(start, n)
    # 1% duplicate content: file i (i % 100 == 37) holds file i-1's bytes; its URI sorts after i-1's
    dup = idx % 100 == 37
    sha = _hex_strings(np.where(dup, idx - 1, idx), 4, 1)
    return {"uri": pc.binary_join_element_wise(INPUT_ROOT + "/", rel, ""), "rel": rel,
            "bytes": pa.array((_mix(idx, 2) % np.uint64(4_950_000)).astype(np.int64) + 50_000),
            "version": _hex_strings(idx, 2, 3), "sha256": sha, "duplicate": pa.array(dup)}


def stamps(n: int, night: int, per_part: int, type_):
    """Each part's rows one night newer than the previous part's (a second apart: ties are not the point)."""
    import numpy as np
    import pyarrow as pa

    base = int(EPOCH.timestamp() * 1_000_000)
    return pa.array(base + (night + np.arange(n) // per_part) * 1_000_000, pa.int64()).cast(type_)


def images_table(start: int, n: int, night: int, per_part: int, seed: int = 0):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pixelmill.tasks.core.tables import IMAGES

    f = file_facts(start, n)
    rng = np.random.default_rng([seed, start, n, 1])
    error = rng.random(n) < 0.01
    previous = pc.binary_join_element_wise(INPUT_ROOT + "/", rels(max(start - 1, 0), n), "") if start else \
        pa.concat_arrays([pa.array([None], pa.string()), f["uri"].slice(0, n - 1)])
    duplicate_of = pc.if_else(f["duplicate"], previous, pa.scalar(None, pa.string()))
    return pa.table({
        "dataset": pa.array([DATASET] * n), "uri": f["uri"], "sha256": f["sha256"], "bytes": f["bytes"],
        "width": pa.array(rng.integers(200, 6000, n), pa.int32()),
        "height": pa.array(rng.integers(200, 6000, n), pa.int32()),
        "format": pa.array(np.where(rng.random(n) < 0.8, "JPEG", "PNG")),
        "mode": pa.array(["RGB"] * n),
        "status": pa.array(np.where(error, "error", "ok")),
        "error": pc.if_else(pa.array(error), "truncated: image file is truncated", pa.scalar(None, pa.string())),
        "split": pa.array(rng.choice(["train", "valid", "test"], n, p=[0.8, 0.1, 0.1])),
        "mask_uri": pa.nulls(n, pa.string()), "duplicate_of": duplicate_of, "source_version": f["version"],
        "ingested_at": stamps(n, night, per_part, IMAGES.field("ingested_at").type),
    }, schema=IMAGES)


def predictions_table(start: int, n: int, night: int, per_part: int, seed: int = 0):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pixelmill.tasks.core.tables import PREDICTIONS

    f = file_facts(start, n)
    rng = np.random.default_rng([seed, start, n, 2])
    error = rng.random(n) < 0.01
    flag = rng.random(n) < 0.02
    out = pc.binary_join_element_wise(OUTPUT_ROOT + "/", pc.replace_substring(f["rel"], ".jpg", ".png"), "")
    nulls = pa.scalar(None, pa.string())
    return pa.table({
        "input_uri": f["uri"], "input_sha256": f["sha256"], "input_version": f["version"], "input_bytes": f["bytes"],
        "output_root": pa.array([OUTPUT_ROOT] * n), "output_uri": pc.if_else(pa.array(error), nulls, out),
        "overlay_uri": pa.nulls(n, pa.string()), "model": pa.array([MODEL] * n),
        "model_version": pa.array([VERSION] * n), "task": pa.array(["restoration"] * n),
        "input_width": pa.array(rng.integers(200, 6000, n), pa.int32()),
        "input_height": pa.array(rng.integers(200, 6000, n), pa.int32()),
        "output_width": pa.array(rng.integers(400, 12000, n), pa.int32()),
        "output_height": pa.array(rng.integers(400, 12000, n), pa.int32()),
        "tiles": pa.array(rng.integers(1, 40, n), pa.int32()),
        "output_sha256": _hex_strings(np.arange(start, start + n), 4, 5 + seed),
        "output_depth": pa.array([8] * n, pa.int32()),
        "notes": pc.if_else(pa.array(rng.random(n) < 0.05), "IPTC not kept in PNG", nulls),
        "drift_mean": pa.array(rng.random(n)), "drift_p95": pa.array(rng.random(n) * 3),
        "niqe_input": pa.array(rng.random(n) * 10), "niqe_output": pa.array(rng.random(n) * 10),
        "clipped": pa.array(rng.random(n) * 0.01), "flag": pa.array(flag),
        "flag_reason": pc.if_else(pa.array(flag), "drift: 3.1 > 3.0", nulls),
        "seconds": pa.array(rng.random(n) * 4),
        "status": pa.array(np.where(error, "error", "ok")),
        "error": pc.if_else(pa.array(error), "corrupt: broken data stream", nulls),
        "run_id": pa.array([f"run-{night:06d}"] * n),
        "created_at": stamps(n, night, per_part, PREDICTIONS.field("created_at").type),
    }, schema=PREDICTIONS)


def part_name(table: str, index: int, salt: str = "") -> str:
    """A shard's part name: a hash, so a listing's order has nothing to do with when a part was written."""
    return "part-" + hashlib.sha256(f"{table}/{index}/{salt}".encode()).hexdigest()[:20] + ".parquet"


def write_parts(workspace: str, table: str, group: str, make, start: int, n: int, per_part: int,
                first_night: int = 0, salt: str = "") -> int:
    """Write rows start..start+n as parts of `per_part` rows (one night each); returns the parts written."""
    from concurrent.futures import ThreadPoolExecutor

    from pixelmill.tasks.core import storage
    from pixelmill.tasks.core.catalog import Catalog, to_parquet_bytes

    folder = storage.join(Catalog(workspace).table_url(table), group)
    block = 100_000 // per_part * per_part  # rows generated at once: a whole number of parts
    count = 0
    with ThreadPoolExecutor(8) as pool:
        for offset in range(0, n, block):
            rows = min(block, n - offset)
            first_part = offset // per_part
            data = make(start + offset, rows, first_night + first_part, per_part)
            jobs = [pool.submit(storage.write_bytes,
                                storage.join(folder, part_name(table, first_part + k // per_part, salt)),
                                to_parquet_bytes(data.slice(k, per_part))) for k in range(0, rows, per_part)]
            for job in jobs:
                job.result()
            count += len(jobs)
    return count


# ---- synthetic listings --------------------------------------------------------------------------------------

BLOCK = 20_000  # listing entries made at once: a listing streams, as storage.iter_files does


def file_listing(n: int):
    """FileInfo for files 0..n, streamed in blocks (what storage.iter_files yields for the archive)."""
    from pixelmill.tasks.core.storage import FileInfo

    for start in range(0, n, BLOCK):
        f = file_facts(start, min(BLOCK, n - start))
        yield from map(FileInfo, f["uri"].to_pylist(), f["bytes"].to_pylist(), f["version"].to_pylist(),
                       f["rel"].to_pylist())


def apply_listing(n: int):
    """ApplyItem for inputs 0..n under INPUT_ROOT (what plan.input_items yields for a folder)."""
    from pixelmill.tasks.inference.plan import ApplyItem

    for info in file_listing(n):
        yield ApplyItem(info.uri, info.rel, info.size, info.version)


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - started, 3)


def _timed_calls(owner, names: tuple[str, ...]) -> dict:
    """Wrap owner's functions `names` so that their seconds add up in the returned dict's "s"."""
    spent = {"s": 0.0}
    for fname in names:
        real = getattr(owner, fname, None)
        if real is None:  # older code (--baseline-src): no such step
            continue

        def wrapper(*args, _real=real, **kwargs):
            started = time.perf_counter()
            try:
                return _real(*args, **kwargs)
            finally:
                spent["s"] += time.perf_counter() - started

        setattr(owner, fname, wrapper)
    return spent


def listing_seconds(listing) -> float:
    started = time.perf_counter()
    count = sum(1 for _ in listing)
    assert count
    return round(time.perf_counter() - started, 3)


# ---- one measurement, in a child process ---------------------------------------------------------------------

def measure(name: str, workspace: str, n: int) -> dict:
    """One measurement (see the module docstring); runs in a fresh process."""
    from pixelmill.tasks.core.catalog import Catalog

    catalog = Catalog(workspace)
    out: dict = {}
    if name in ("ingest_plan", "ingest_nochange", "ingest_nochange_settled", "ingest_new1000"):
        from pixelmill.tasks.prep import ingest
        from pixelmill.tasks.prep.ingest import IngestConfig, existing_versions, finalize_dataset, plan_ingest

        files = n + (NEW if name == "ingest_new1000" else 0)
        out["listing_s"] = listing_seconds(file_listing(files))
        match = _timed_calls(ingest, ("unchanged_files",))  # the listing matched against the catalog
        existing, out["existing_versions_s"] = timed(lambda: existing_versions(catalog, DATASET))
        plan, out["plan_ingest_s"] = timed(lambda: plan_ingest(DATASET, file_listing(files), existing,
                                                               IngestConfig()))
        del existing  # as in the flow: the plan task's catalog view is gone once it returns the plan
        assert plan.unchanged == n and sum(len(s.files) for s in plan.shards) == files - n, (plan.unchanged, n)
        out["match_s"] = round(match["s"], 3)
        out["loop_s"] = round(out["plan_ingest_s"] - out["listing_s"] - match["s"], 3)
        if name == "ingest_new1000":  # the shards' parts, as ingest_shard commits them (not timed: no catalog)
            for k, shard in enumerate(plan.shards):
                catalog.write_part("images", DATASET, shard.shard_id,
                                   images_table(n + k * IMAGE_PART_ROWS, len(shard.files), 10**6 + k, 10**9))
        if name != "ingest_plan":
            out["finalize_parts"], out["finalize_s"] = timed(lambda: finalize_dataset(catalog, DATASET))
        out["catalog_s"] = round(out["existing_versions_s"] + match["s"] + out.get("finalize_s", 0.0), 3)
        out["total_s"] = round(out["existing_versions_s"] + out["plan_ingest_s"] + out.get("finalize_s", 0.0), 3)
    elif name == "apply_plan":
        import pyarrow as pa

        from pixelmill.tasks.core.cards import ModelCard
        from pixelmill.tasks.inference import plan as apply_plan

        card = ModelCard(name=MODEL, version=VERSION, uri=f"{workspace}/models/{MODEL}/{VERSION}",
                         task="restoration", arch="unet")
        files = n + NEW
        out["listing_s"] = listing_seconds(apply_listing(files))
        apply_plan.input_items = lambda source, catalog: apply_listing(files)  # the synthetic listing
        # the catalog's history of the output, read where plan_apply reads it (output_history in older code)
        reader = "output_ledger" if hasattr(apply_plan, "output_ledger") else "output_history"
        real_reader = getattr(apply_plan, reader)

        def read_history(*args, **kwargs):
            history, out["output_history_s"] = timed(lambda: real_reader(*args, **kwargs))
            out["history_done"] = history.done.num_rows if isinstance(history.done, pa.Table) else len(history.done)
            return history

        setattr(apply_plan, reader, read_history)
        # the listing matched against it, and the owners and outputs of the inputs to do looked up
        match = _timed_calls(getattr(apply_plan, "Ledger", None), ("done_rows", "owners_of", "outputs_of"))
        plan, out["plan_apply_s"] = timed(lambda: apply_plan.plan_apply(catalog, card, INPUT_ROOT, OUTPUT_ROOT,
                                                                        apply_plan.ApplyConfig()))
        assert plan.skipped == n and plan.todo == NEW and out["history_done"] == n, (plan.skipped, plan.todo)
        out["match_s"] = round(match["s"], 3)
        out["catalog_s"] = round(out["output_history_s"] + match["s"], 3)
        out["loop_s"] = round(out["plan_apply_s"] - out["listing_s"] - out["catalog_s"], 3)
        out["total_s"] = out["plan_apply_s"]
    elif name in ("show_images", "show_predictions"):
        from pixelmill.tasks.core.tables import table as table_of

        table, group = ("images", DATASET) if name == "show_images" else ("predictions", MODEL)
        decl = table_of(table)
        data, out["read_s"] = timed(lambda: catalog.read(table, group))
        assert data.num_rows >= n
        text, out["summary_s"] = timed(lambda: decl.markdown(decl.summary(data), f"{table} table"))
        out["total_s"] = round(out["read_s"] + out["summary_s"], 3)
    elif name == "compact_predictions_settled":  # a compaction with nothing to do, then the next one
        out["parts"] = len(catalog.part_uris("predictions", MODEL))
        out["result"], out["first_s"] = timed(lambda: catalog.compact("predictions", MODEL))
        out["result_again"], out["total_s"] = timed(lambda: catalog.compact("predictions", MODEL))
    elif name in ("compact_images", "compact_predictions", "compact_predictions_again"):
        from pixelmill.tasks.prep.ingest import finalize_dataset

        table, group = ("images", DATASET) if name == "compact_images" else ("predictions", MODEL)
        if name == "compact_predictions_again":  # a nightly apply of 1,000 new inputs: 16 parts of 64
            write_parts(workspace, "predictions", MODEL, predictions_table, n + NEW, NEW, PREDICTION_PART_ROWS,
                        first_night=10**6, salt="again")
        out["parts_before"] = len(catalog.part_uris(table, group))
        # the images table's compaction is finalize_dataset (ingest's finish step); the others' is compact
        work = (lambda: finalize_dataset(catalog, group)) if table == "images" else \
            (lambda: catalog.compact(table, group))
        out["result"], out["total_s"] = timed(work)
        out["parts_after"] = len(catalog.part_uris(table, group))
    elif name == "noop":
        import pixelmill.tasks.inference.plan  # noqa: F401  (what every child imports)
        import pixelmill.tasks.prep.ingest  # noqa: F401
    else:
        raise ValueError(f"unknown measurement {name!r}")
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    out["peak_rss_mib"] = round(int(status["VmHWM"].split()[0]) / 1024)
    return out


def child(name: str, workspace: str, n: int, env: dict, baseline: Path | None = None) -> dict:
    """`measure` in a fresh process: its numbers and its peak RSS. With `baseline` (a folder whose `pixelmill/`
    links to an older checkout's tasks, flows and models), the child imports that code instead of this one."""
    started = time.perf_counter()
    if baseline is not None:
        env = env | {"PYTHONPATH": str(baseline), "PIXELMILL_BENCH_EXPECT_SRC": str(baseline)}
    done = subprocess.run([sys.executable, __file__, "--child", name, "--workspace", workspace, "--n", str(n)],
                          capture_output=True, text=True, env=os.environ | env)
    if done.returncode:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["child_wall_s"] = round(time.perf_counter() - started, 2)
    print(f"  {name}: {result}", file=sys.stderr, flush=True)
    return result


def cli_show(table: str, option: str, group: str, workspace: str, env: dict) -> float:
    """Wall seconds of `pixelmill catalog show` itself, start-up included."""
    exe = Path(sys.executable).parent / "pixelmill"
    started = time.perf_counter()
    done = subprocess.run([str(exe), "catalog", "show", table, option, group, "--workspace", workspace],
                          capture_output=True, text=True, env=os.environ | env)
    if done.returncode:
        raise RuntimeError(f"catalog show failed:\n{done.stderr[-3000:]}")
    return round(time.perf_counter() - started, 2)


# ---- the run -------------------------------------------------------------------------------------------------

def baseline_path(workdir: Path, checkout: Path) -> Path:
    """A folder for PYTHONPATH whose `pixelmill` package is the old checkout's (a namespace package found before
    the editable install's)."""
    folder = workdir / "baseline-path"
    (folder / "pixelmill").mkdir(parents=True, exist_ok=True)
    for sub in ("tasks", "flows", "models"):
        link = folder / "pixelmill" / sub
        if not link.exists():
            link.symlink_to(checkout.resolve() / sub)
    return folder


def one_size(n: int, workspace: str, env: dict, fragmented: bool, baseline: Path | None = None) -> dict:
    from pixelmill.tasks.core.catalog import Catalog

    print(f"{n} rows in {workspace}", file=sys.stderr, flush=True)
    result: dict = {"rows": n}
    started = time.perf_counter()
    images = write_parts(workspace, "images", DATASET, images_table, 0, n, IMAGE_PART_ROWS)
    predictions = write_parts(workspace, "predictions", MODEL, predictions_table, 0, n, PREDICTION_PART_ROWS)
    result["generate_s"] = round(time.perf_counter() - started, 2)
    result["parts"] = {"images": images, "predictions": predictions}
    if fragmented:
        result["fragmented"] = {m: child(m, workspace, n, env) for m in
                                ("ingest_plan", "apply_plan", "show_images", "show_predictions")}
        result["fragmented"]["cli_show_images_s"] = cli_show("images", "--dataset", DATASET, workspace, env)
    if baseline is not None:  # the old code on the layout it left: what a nightly run cost before this change
        result["baseline_fragmented"] = {m: child(m, workspace, n, env, baseline) for m in
                                         ("ingest_nochange", "apply_plan", "show_images", "show_predictions")}
    result["compact_images"] = child("compact_images", workspace, n, env)
    result["compact_predictions"] = child("compact_predictions", workspace, n, env)
    catalog = Catalog(workspace)
    result["parts_after_compaction"] = {"images": len(catalog.part_uris("images", DATASET)),
                                        "predictions": len(catalog.part_uris("predictions", MODEL))}
    result["compacted"] = {m: child(m, workspace, n, env) for m in
                           ("ingest_nochange", "ingest_nochange_settled", "ingest_new1000", "apply_plan",
                            "show_images", "show_predictions", "compact_predictions_again",
                            "compact_predictions_settled")}
    result["compacted"]["cli_show_images_s"] = cli_show("images", "--dataset", DATASET, workspace, env)
    result["compacted"]["cli_show_predictions_s"] = cli_show("predictions", "--model", MODEL, workspace, env)
    return result


def targets(sizes: dict) -> dict:
    """The issue's targets, checked on the biggest size against the smallest (compacted layout)."""
    small, big = sizes[min(sizes)], sizes[max(sizes)]
    out = {"sizes": [min(sizes), max(sizes)]}
    for m in ("ingest_nochange", "ingest_nochange_settled", "ingest_new1000", "apply_plan"):
        s, b = small["compacted"][m], big["compacted"][m]
        # the catalog's part (reads, dedup, finalize, history) and the listing's part (making it, the planner's
        # per-file loop) separately: the target allows the listing
        out[m] = {"ratio_total": round(b["total_s"] / max(s["total_s"], 1e-3), 1),
                  "ratio_catalog": round(b["catalog_s"] / max(s["catalog_s"], 1e-3), 1),
                  "listing_and_loop_s": round(b["listing_s"] + b["loop_s"], 2),
                  "within_2x_plus_listing": b["total_s"] <= 2 * s["total_s"] + b["listing_s"] + b["loop_s"]}
    out["show_images_s"] = big["compacted"]["cli_show_images_s"]
    out["show_under_3s"] = max(big["compacted"]["cli_show_images_s"], big["compacted"]["cli_show_predictions_s"]) < 3
    peaks = [v["peak_rss_mib"] for r in sizes.values() for phase in ("compacted",) for v in r[phase].values()
             if isinstance(v, dict)] + [r[k]["peak_rss_mib"] for r in sizes.values()
                                        for k in ("compact_images", "compact_predictions")]
    out["peak_rss_mib"] = max(peaks)
    out["rss_under_1gib"] = max(peaks) < 1024
    out["parts_after_compaction"] = {n: r["parts_after_compaction"] for n, r in sizes.items()}
    return out


def run(workdir: Path, args) -> dict:
    with s3_for_bench(workdir, args.s3) as env:
        sizes = {}
        for n in args.sizes:
            workspace = f"s3://bench/ws-{n}" if args.s3 else str(workdir / f"ws-{n}")
            sizes[n] = one_size(n, workspace, env, fragmented=not args.no_fragmented,
                                baseline=baseline_path(workdir, Path(args.baseline_src)) if args.baseline_src else None)
    return {"store": "s3 (SeaweedFS)" if args.s3 else "local disk", "sizes": sizes,
            "noop_child": child("noop", str(workdir), 0, env),
            "targets": targets(sizes) if len(sizes) > 1 else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",") if v], default=[10_000, 100_000],
                        help="rows per group, e.g. 10000,100000,1000000")
    parser.add_argument("--quick", action="store_true", help="sizes 2000,4000: a smoke run")
    parser.add_argument("--s3", action="store_true", help="on a SeaweedFS S3 server started for the run")
    parser.add_argument("--no-fragmented", action="store_true", help="skip the reads before the first compaction")
    parser.add_argument("--baseline-src", default=None,
                        help="an older checkout (e.g. `git archive HEAD tasks flows models | tar -x -C DIR`): its code "
                             "measured on the fragmented layout too (at 1M rows: minutes and GBs)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workspace", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        expect = os.environ.get("PIXELMILL_BENCH_EXPECT_SRC")
        if expect:  # a baseline child must run the old code, not this checkout's
            import pixelmill.tasks.core.catalog as imported

            assert not str(Path(imported.__file__).resolve()).startswith(str(REPO)), imported.__file__
        print(json.dumps(measure(args.child, args.workspace, args.n)))
        return
    if args.quick:
        args.sizes = [2000, 4000]
    run_benchmark("catalog", Path(args.workdir) if args.workdir else None, lambda workdir: run(workdir, args))


if __name__ == "__main__":
    main()
