"""Benchmark: the crappify flow (lesson7 recipe) against a plain multiprocessing.Pool loop, in the same run.

    python bench/crappify.py --quick                 # 200 images, a smoke run
    python bench/crappify.py --n 2000                # the issue's targets (below)
    python bench/crappify.py --runner threads --threads 2 --workers 1,2

Targets: the flow >= 0.9 x the plain pool at equal workers; 2 workers >= 1.7 x one worker.

Both sides make the same pairs from the same N images: decode the PNG, resize the short side to 96 (bilinear),
write the drawn JPEG quality (10-70) in white at a random spot of the top-left quarter, save the JPEG at that
quality (fastai lesson 7's `crappify`), and write the HR target, which for a PNG source is the source file's
bytes unchanged (what the flow does, see `tasks.crappify._hr_bytes`). The pool is fastai's loop as written in
plain PIL on a fork-context `multiprocessing.Pool(k)`. The flow runs `flows.crappify.run_crappify` on its
default thread runner (`workers` shards at once, `threads` images at once inside a shard) and on a Dask
LocalCluster of `workers` processes; a trivial Dask flow is timed too, to separate the cluster's start-up.

Setup is not timed: the CBSD68 PNGs are repeated to N files (each repeat with a few unique bytes after IEND,
so the catalog sees distinct images), ingested once, and a trivial flow starts the Prefect server. Every
measurement writes to a fresh paired-set name (so nothing is skipped) and is checked: N ok `pairs` rows for
the flow, N LR and N HR files for the pool. One JSON object goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import multiprocessing as mp
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

from _common import parse_with_quick, run_benchmark

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "restoration" / "CBSD68"
TARGET_RATIO = 0.9  # flow images/s over the pool's, at equal workers
TARGET_SPEEDUP = 1.7  # 2 workers over 1 worker
SHORT_SIDE, QUALITY, FONT_SIZE = 96, (10, 70), 11  # RECIPES["lesson7"]


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


RUNNERS = ("threads", "dask", "dask-api")


def runner_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = sorted(set(values) - set(RUNNERS))
    if not values or bad:
        raise argparse.ArgumentTypeError(f"runners are {', '.join(RUNNERS)}; got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="images to crappify (default 2000)")
    p.add_argument("--quick", action="store_true", help="smoke run: n=200")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"PNG folder (default {DEFAULT_SOURCE})")
    p.add_argument("--workers", type=int_list, default=[1, 2], help="worker counts, e.g. 1,2 (default)")
    p.add_argument("--threads", type=int_list, default=[1, 2],
                   help="CrappifyConfig.threads values for the flow (images at once inside a shard; default 1,2)")
    p.add_argument("--runner", type=runner_list, default=list(RUNNERS),
                   help="flow task runners, comma-separated (default all): threads (Prefect's thread pool), "
                        "dask (a LocalCluster, as shipped), dask-api (the same, with PREFECT_API_URL set to this "
                        "process's ephemeral server so the Dask workers use it instead of starting their own)")
    p.add_argument("--dask-threads", type=int_list, default=[1],
                   help="CrappifyConfig.threads values for the Dask runners (default 1: one process per core)")
    p.add_argument("--shard-size", type=int, default=None, help="images per task (default: CrappifyConfig's)")
    p.add_argument("--repeats", type=int, default=1, help="run each configuration this many times, keep the best")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    return parse_with_quick(p, argv)


def build_inputs(source: Path, src: Path, n: int) -> dict:
    """Write n PNGs with distinct content into src (repeats get a unique trailer after IEND)."""
    from pixelmill.tasks.core.images import open_image

    originals = sorted(f for f in source.glob("*.png") if f.is_file())
    if not originals:
        raise SystemExit(f"no PNG files in {source}; pass --source")
    src.mkdir(parents=True)
    seen: set[str] = set()
    for i in range(n):
        orig = originals[i % len(originals)]
        round_ = i // len(originals)
        data = orig.read_bytes()
        if round_:
            data += b"\x00pixelmill-bench-copy-%d\x00" % round_  # after IEND: decoders ignore it
            if round_ == 1:  # check once per original that the trailer leaves the image decodable
                im, facts = open_image(data)
                if facts.format != "PNG":
                    raise SystemExit(f"{orig}: decoded as {facts.format}, expected PNG")
                im.close()
        seen.add(hashlib.sha256(data).hexdigest())
        (src / f"{i:06d}_{orig.name}").write_bytes(data)
    if len(seen) != n:
        raise SystemExit(f"only {len(seen)} distinct contents among {n} files")
    return {"from": str(source), "real_files": len(originals), "files": n, "distinct_contents": len(seen)}


# ---- the baseline: fastai's crappify in plain PIL on a process pool ----------------------------------

_FONT = None


def pool_one(job: tuple[str, str]) -> int:
    """One image, as fastai's lesson 7 loop does it, plus the HR copy the flow also writes."""
    global _FONT
    from PIL import Image, ImageDraw, ImageFont

    path, out = job
    name = os.path.basename(path)
    data = Path(path).read_bytes()
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    s = SHORT_SIDE  # the short side to 96, keeping the aspect (as the recipe's Downscale.output_size)
    size = (s, max(1, round(h * s / w))) if w <= h else (max(1, round(w * s / h)), s)
    img = img.resize(size, Image.Resampling.BILINEAR)
    rng = random.Random(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big"))
    q = rng.randint(*QUALITY)
    if _FONT is None:
        _FONT = ImageFont.load_default(size=FONT_SIZE)
    ImageDraw.Draw(img).text((rng.randint(0, size[0] // 2), rng.randint(0, size[1] // 2)), str(q),
                             fill=(255, 255, 255), font=_FONT)
    img.save(os.path.join(out, "lr", os.path.splitext(name)[0] + ".jpg"), format="JPEG", quality=q)
    with open(os.path.join(out, "hr", name), "wb") as handle:
        handle.write(data)
    return 1


def run_pool(paths: list[str], out: Path, workers: int) -> int:
    (out / "lr").mkdir(parents=True)
    (out / "hr").mkdir()
    chunksize = max(1, len(paths) // (workers * 16))
    with mp.get_context("fork").Pool(workers) as pool:
        done = sum(pool.imap_unordered(pool_one, [(p, str(out)) for p in paths], chunksize=chunksize))
    lr, hr = len(os.listdir(out / "lr")), len(os.listdir(out / "hr"))
    if done != len(paths) or lr != len(paths) or hr != len(paths):
        raise SystemExit(f"pool made {done} images, {lr} LR and {hr} HR files; expected {len(paths)} each")
    return done


# ---- measuring ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def shared_api_url(enabled: bool):
    """Point child processes (Dask workers inherit the environment) at this process's ephemeral server."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if not enabled or PREFECT_API_URL.value() or "PREFECT_API_URL" in os.environ:
        yield
        return
    server = SubprocessASGIServer()  # the singleton the ephemeral client started
    if not server.running:
        raise SystemExit("the ephemeral Prefect server is not running; cannot share its URL with Dask workers")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run_benchmark("crappify", args.workdir, lambda workdir: run(args, workdir))


def run(args: argparse.Namespace, workdir: Path) -> dict:
    import PIL
    import prefect
    from prefect import flow, task

    from pixelmill.flows.crappify import SHARDS_IN_FLIGHT, run_crappify
    from pixelmill.flows.ingest import ingest
    from pixelmill.flows.runners import task_runner_for
    from pixelmill.tasks.core.catalog import Catalog
    from pixelmill.tasks.core.layout import Layout
    from pixelmill.tasks.prep.crappify import CrappifyConfig

    loadavg_before = [round(v, 2) for v in os.getloadavg()]
    src, ws = workdir / "src", str(workdir / "workspace")
    log(f"building {args.n} input files in {src} ...")
    source = build_inputs(args.source.resolve(), src, args.n)
    paths = sorted(str(p) for p in src.iterdir())

    @flow(name="bench-warmup")
    def warmup() -> int:
        return 1

    @task(name="bench-noop")
    def noop(i: int) -> int:
        return i

    @flow(name="bench-dask-startup")
    def dask_startup(k: int) -> int:
        return sum(f.result() for f in noop.map(range(k)))

    log("starting the Prefect server (not timed) ...")
    server_s, _ = timed(warmup)
    log(f"ingesting {args.n} images (not timed) ...")
    ingest_s, _ = timed(ingest, str(src), dataset="bench", workspace=ws)
    images = Catalog(ws).read("images", "bench", columns=["status", "duplicate_of"])
    ok = sum(1 for s, d in zip(images["status"].to_pylist(), images["duplicate_of"].to_pylist(), strict=True)
             if s == "ok" and d is None)
    if ok != args.n:
        raise SystemExit(f"ingest gave {ok} ok non-duplicate images, expected {args.n}")

    runners = args.runner
    threads_for = {"threads": args.threads, "dask": args.dask_threads, "dask-api": args.dask_threads}
    extra = {} if args.shard_size is None else {"shard_size": args.shard_size}
    best: dict[str, dict] = {}
    fixed: dict[str, float] = {}

    def record(key: str, seconds: float, load: float, images: bool = True, **info) -> None:
        rate_text = f"{args.n / seconds:.1f} images/s, " if images else ""
        log(f"  {key}: {seconds:.2f} s ({rate_text}load {load})")
        if key not in best or seconds < best[key]["seconds"]:
            rate = {"images_per_s": round(args.n / seconds, 1)} if images else {}
            best[key] = {"seconds": round(seconds, 3), **rate, "load1_before": load, **info}

    for r in range(args.repeats):
        for k in args.workers:  # pool and flow interleaved, so load from other processes hits both alike
            log(f"repeat {r}, workers {k}:")
            load = load1()
            seconds, _ = timed(run_pool, paths, workdir / f"pool-{k}-{r}", k)
            shutil.rmtree(workdir / f"pool-{k}-{r}")
            record(f"pool_w{k}", seconds, load)
            for runner in runners:
                dask = None if runner == "threads" else "local"
                with shared_api_url(runner == "dask-api"):
                    if dask:
                        load = load1()
                        dask_runner = task_runner_for(dask, k, ws, SHARDS_IN_FLIGHT)
                        startup, _ = timed(dask_startup.with_options(task_runner=dask_runner), k)
                        record(f"{runner}_startup_w{k}", startup, load, images=False)
                    for t in threads_for[runner]:
                        name = f"bench-{runner}-w{k}-t{t}-{r}"
                        cfg = CrappifyConfig(recipe="lesson7", workers=k, threads=t, name=name, **extra)
                        load = load1()
                        seconds, _ = timed(run_crappify, "bench", cfg, workspace=ws, dask=dask)
                        pairs = Catalog(ws).read("pairs", name, columns=["status", "error"])
                        statuses = pairs["status"].to_pylist()
                        if pairs.num_rows != args.n or statuses.count("ok") != args.n:
                            errors = [e for e in pairs["error"].to_pylist() if e][:5]
                            raise SystemExit(f"{name}: {pairs.num_rows} pairs rows, {statuses.count('ok')} ok; "
                                             f"expected {args.n}. First errors: {errors}")
                        if runner == "threads" and r == 0 and k == args.workers[0] and t == threads_for[runner][0]:
                            # Fixed cost of a flow call: the same set again, nothing left to make
                            # (plan, pairs table, gallery, artifacts, flow and task run bookkeeping).
                            rerun_s, summary = timed(run_crappify, "bench", cfg, workspace=ws)
                            if summary["made"] != 0:
                                raise SystemExit(f"{name}: the rerun made {summary['made']} pairs, expected 0")
                            fixed["flow_rerun_nothing_to_do_seconds"] = round(rerun_s, 3)
                        shutil.rmtree(Layout.of(ws).paired_set(name).removeprefix("file://"), ignore_errors=True)
                        record(f"flow_{runner}_w{k}_t{t}", seconds, load, pairs_ok=statuses.count("ok"))

    pool = {k: best[f"pool_w{k}"]["images_per_s"] for k in args.workers}
    ratios, speedups, met = {}, {}, {}
    k1, k2 = min(args.workers), max(args.workers)
    if k2 > k1:
        speedups["pool"] = round(pool[k2] / pool[k1], 3)
    for runner in runners:
        for t in threads_for[runner]:
            label = f"flow_{runner}_t{t}"
            rate = {k: best[f"flow_{runner}_w{k}_t{t}"]["images_per_s"] for k in args.workers}
            ratios[label] = {f"w{k}": round(rate[k] / pool[k], 3) for k in args.workers}
            met[f"{label}_ratio"] = all(v >= TARGET_RATIO for v in ratios[label].values())
            if k2 > k1:
                speedups[label] = round(rate[k2] / rate[k1], 3)
                met[f"{label}_speedup"] = speedups[label] >= TARGET_SPEEDUP
    if k2 > k1:
        met["pool_speedup"] = speedups["pool"] >= TARGET_SPEEDUP
    cfg = CrappifyConfig()
    return {
        "benchmark": "crappify",
        "recipe": "lesson7",
        "n": args.n,
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "workers": args.workers,
        "threads": args.threads,
        "shard_size": args.shard_size or cfg.shard_size,
        "repeats": args.repeats,
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "runs": best,
        "ratio_flow_vs_pool": ratios,
        "speedup_max_vs_min_workers": speedups,
        "scaling_efficiency": {key: round(v / (k2 / k1), 3) for key, v in speedups.items()},
        "targets": {"ratio_flow_vs_pool": TARGET_RATIO, "speedup_2_vs_1": TARGET_SPEEDUP},
        "met": met,
        "flow_fixed_cost": fixed,
        "notes": ("threads: `workers` shards at once x `threads` images per shard, in one process (GIL); "
                  "dask: a LocalCluster of `workers` processes, its start-up included in flow_dask_* "
                  "(dask_startup_w* times a trivial flow of `workers` no-op tasks on the same runner); "
                  "dask-api: the same with PREFECT_API_URL set to this process's ephemeral server"),
        "untimed_setup_seconds": {"server_start": round(server_s, 2), "ingest": round(ingest_s, 2)},
        "source": source,
        "versions": {"python": platform.python_version(), "prefect": prefect.__version__,
                     "pillow": PIL.__version__},
    }


if __name__ == "__main__":
    main()
