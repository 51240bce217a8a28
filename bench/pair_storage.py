"""Benchmark: what a paired set costs in storage and crappify time, per recipe (issue 18, deliverable 7).

    python bench/pair_storage.py                          # 3,000 photos, lesson7 and sr-x2, 2 processes
    python bench/pair_storage.py --n 600 --recipes lesson7,sr-x2,sr-x4 --source ../shared/data/restoration/CSun_Hays80

Inputs: the photos of --source (default ../shared/data/restoration/CBSD68: 68 481x321 PNGs; PNG and JPEG files are
taken), repeated to N files with distinct bytes (a trailer after the image's end, which decoders ignore). They are
ingested once (not timed), then each recipe's set is made by the crappify code without Prefect (plan, then every
shard in this machine's process pool, as the flow's default runner does; the pool is started before the clock).

Reported per set: files and bytes under the set's hr/, lr/ and mask/ folders (apparent size and blocks on disk),
its catalog part bytes, the pairs by how their HR target is stored (hr_kind: "copy" or "source"; "copy" for rows
written before references existed), bytes per pair, and the wall seconds and ms per pair of making it. The source
photos' own bytes are reported once: a set whose HR targets refer to them adds no copy of them. One JSON object
goes to stdout. Runs any version of the code (it uses only plan_crappify and crappify_shard), so the same script
measures before and after a change.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import photos_or_generated, run_benchmark

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "restoration" / "CBSD68"
SUFFIXES = (".png", ".jpg", ".jpeg")


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=3000, help="photos in the data set (default 3000)")
    p.add_argument("--recipes", default="lesson7,sr-x2", help="comma-separated recipe names (default lesson7,sr-x2)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"photo folder (default {DEFAULT_SOURCE})")
    p.add_argument("--workers", type=int, default=2, help="processes making pairs (default 2)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    if args.n < 1 or args.workers < 1:
        p.error("--n and --workers must be >= 1")
    return args


def build_inputs(source: Path, src: Path, n: int) -> dict:
    """n photo files with distinct bytes in src; repeats get a trailer after the image's end."""
    originals = sorted(f for f in source.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
    if not originals:
        raise SystemExit(f"no PNG or JPEG files in {source}; pass --source")
    src.mkdir(parents=True)
    total = 0
    for i in range(n):
        orig = originals[i % len(originals)]
        data = orig.read_bytes()
        if i >= len(originals):
            data += b"\x00pixelmill-bench-copy-%d\x00" % (i // len(originals))
        (src / f"{i:06d}_{orig.name}").write_bytes(data)
        total += len(data)
    return {"from": str(source), "real_files": len(originals), "files": n, "bytes": total,
            "formats": dict(Counter(f.suffix.lower() for f in originals))}


def folder_usage(folder: Path) -> dict:
    """Files, apparent bytes and bytes of disk blocks under each subfolder kind (hr, lr, mask) of a paired set."""
    out: dict[str, dict] = {}
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        kind = path.parent.name  # {split}/{hr,lr,mask}/file
        st = path.stat()
        entry = out.setdefault(kind, {"files": 0, "bytes": 0, "disk_bytes": 0})
        entry["files"] += 1
        entry["bytes"] += st.st_size
        entry["disk_bytes"] += st.st_blocks * 512
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run_benchmark("pair-storage", args.workdir, lambda workdir: run(args, workdir))


def run(args: argparse.Namespace, workdir: Path) -> dict:
    import PIL

    from pixelmill.tasks.core import storage
    from pixelmill.tasks.core.catalog import Catalog
    from pixelmill.tasks.core.layout import Layout
    from pixelmill.tasks.prep.crappify import CrappifyConfig, close_pools, crappify_shard, plan_crappify, start_pool
    from pixelmill.tasks.prep.ingest import (
        IngestConfig,
        existing_versions,
        finalize_dataset,
        ingest_shard,
        plan_ingest,
    )

    loadavg_before = [round(v, 2) for v in os.getloadavg()]
    ws = str(workdir / "workspace")
    src = workdir / "src"
    folder = photos_or_generated(args.source.resolve(), workdir / "generated")
    log(f"building {args.n} input files from {folder} ...")
    inputs = build_inputs(folder, src, args.n)

    log("ingesting (not timed) ...")
    catalog = Catalog(ws)
    icfg = IngestConfig(split_fractions=(1.0, 0.0, 0.0))
    plan = plan_ingest("bench", storage.iter_files(str(src)), existing_versions(catalog, "bench"), icfg)
    for shard in plan.shards:
        ingest_shard(shard, ws, icfg)
    finalize_dataset(catalog, "bench")

    sets = {}
    for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        cfg = CrappifyConfig(recipe=recipe, workers=args.workers, name=f"bench-{recipe}")
        cplan = plan_crappify(catalog, "bench", cfg)
        start_pool(args.workers)
        time.sleep(1.0)  # the pool's start-up is not the set's cost
        load = round(os.getloadavg()[0], 2)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.workers * 2) as threads:  # one shard running and one queued per process
            list(threads.map(functools.partial(crappify_shard, workspace=ws, cfg=cfg, processes=args.workers),
                             cplan.shards))
        seconds = time.perf_counter() - t0
        close_pools()
        table = Catalog(ws).read("pairs", cfg.name)
        rows = table.num_rows
        ok = table["status"].to_pylist().count("ok")
        kinds = (Counter(k or "copy" for k in table["hr_kind"].to_pylist()) if "hr_kind" in table.column_names
                 else Counter({"copy": rows}))
        set_dir = Path(Layout.of(ws).paired_set(cfg.name).removeprefix("file://"))
        usage = folder_usage(set_dir)
        total = sum(u["bytes"] for u in usage.values())
        disk = sum(u["disk_bytes"] for u in usage.values())
        part_dir = Path(Layout.of(ws).table("pairs").removeprefix("file://")) / cfg.name
        part_bytes = sum(p.stat().st_size for p in part_dir.glob("*.parquet"))
        sets[recipe] = {"pairs": rows, "ok": ok, "hr_kind": dict(kinds), "folders": usage, "bytes": total,
                        "disk_bytes": disk, "bytes_per_pair": round(total / max(ok, 1)),
                        "catalog_part_bytes": part_bytes, "seconds": round(seconds, 3),
                        "ms_per_pair": round(1000 * seconds / max(rows, 1), 3), "load1_before": load,
                        "shards": len(cplan.shards)}
        log(f"{recipe}: {ok}/{rows} ok, {total / 2**20:.1f} MiB ({usage}), {seconds:.1f} s, kinds {dict(kinds)}")
        shutil.rmtree(set_dir)
    return {
        "benchmark": "pair_storage",
        "n": args.n,
        "workers": args.workers,
        "source": inputs,
        "source_bytes": inputs["bytes"],
        "sets": sets,
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "pillow": PIL.__version__,
        "notes": "bytes: apparent sizes of the set's files (the source photos not counted; see source_bytes); "
                 "disk_bytes: their blocks; seconds: making the pairs in the process pool, without Prefect",
    }


if __name__ == "__main__":
    main()
