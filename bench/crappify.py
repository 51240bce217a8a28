"""Benchmark: the crappify flow (lesson7, default options) against a plain multiprocessing.Pool, in the same run.

    python bench/crappify.py --quick                 # 200 and 600 images: a smoke run
    python bench/crappify.py                         # 1000 and 3000 images, workers 1 and 2, threads and Dask
    python bench/crappify.py --runner threads --workers 2 --repeats 3

Targets (issue 12), all ratios of rates measured in this run:
- the flow >= 1.0 x the plain pool at equal processes, on the marginal rate between the two sizes (so start-up
  costs cancel): (n2 - n1) / (t(n2) - t(n1));
- its fixed cost, the intercept t(n1) - n1 / marginal rate, <= 3 s (the Prefect server's start is not in it);
- scaling: the flow at k workers >= 0.9 x k x its 1-worker marginal rate;
- Dask (`--dask local`) >= 0.8 x the default runner at the same worker count.

Both sides make the same pairs from the same images, and both start cold in every measurement (a fresh Pool for
the baseline; the flow's process pool is closed after each run). The baseline is fastai's lesson 7 loop in plain
PIL, split into steps: read the file, decode it to RGB, resize the short side to 96 (bilinear) and write the
drawn JPEG quality (10-70) in white in the top-left quarter, encode the JPEG at that quality and write it: the
LR file only, as a plain script would, since the HR target is the source itself (the flow writes no HR copy
either: its pairs refer to the source, issue 18). Every flow run is checked: all pairs ok, every pair's HR a
reference to its source, and every file it wrote byte-identical to the first flow run's (at the fewest workers).

Also measured: CPU seconds by process (this process, the Prefect server, each pool child) for every flow run,
and a per-step profile of one image's work, the flow's `crappify_one` against the plain loop's steps, on a sample
in this process (cProfile: its overhead lands on both sides alike). Inputs: ../shared/data/restoration/CBSD68
(generated photo-like PNGs when absent), repeated to N files with distinct bytes. One JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import multiprocessing as mp
import os
import platform
import pstats
import random
import resource
import shutil
import sys
import time
from pathlib import Path

from _common import (
    cpu_by_role,
    int_list,
    marginal,
    parse_with_sizes,
    photos_or_generated,
    process_tree_cpu,
    run_benchmark,
)

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "restoration" / "CBSD68"
TARGETS = {"flow_vs_pool": 1.0, "fixed_cost_seconds": 3.0, "scaling_efficiency": 0.9, "dask_vs_threads": 0.8}
SHORT_SIDE, QUALITY, FONT_SIZE = 96, (10, 70), 11  # RECIPES["lesson7"]
RUNNERS = ("threads", "dask")
PROFILE_IMAGES = 200


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def runner_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = sorted(set(values) - set(RUNNERS))
    if not values or bad:
        raise argparse.ArgumentTypeError(f"runners are {', '.join(RUNNERS)}; got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int_list, default=[1000, 3000],
                   help="two image counts; rates are marginal between them (default 1000,3000)")
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 200,600, one repeat")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"PNG folder (default {DEFAULT_SOURCE})")
    p.add_argument("--workers", type=int_list, default=[1, 2], help="process counts, e.g. 1,2 (default)")
    p.add_argument("--runner", type=runner_list, default=list(RUNNERS),
                   help="flow task runners, comma-separated (default all): threads (the default runner: shards "
                        "on threads, each in a child of one process pool), dask (a LocalCluster)")
    p.add_argument("--repeats", type=int, default=2, help="measure everything this many times, keep the best")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    return parse_with_sizes(p, argv)


def build_inputs(source: Path, src: Path, n: int) -> dict:
    """Write n PNGs with distinct content into src (repeats get a unique trailer after IEND)."""
    originals = sorted(f for f in source.glob("*.png") if f.is_file())
    if not originals:
        raise SystemExit(f"no PNG files in {source}; pass --source")
    src.mkdir(parents=True)
    for i in range(n):
        orig = originals[i % len(originals)]
        data = orig.read_bytes()
        if i >= len(originals):
            data += b"\x00pixelmill-bench-copy-%d\x00" % (i // len(originals))  # after IEND: decoders ignore it
        (src / f"{i:06d}_{orig.name}").write_bytes(data)
    return {"from": str(source), "real_files": len(originals), "files": n}


# ---- the baseline: fastai's crappify in plain PIL, one function per step ---------------------------------------

_FONT = None


def plain_read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def plain_decode(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def plain_degrade(img, name: str):
    global _FONT
    from PIL import Image, ImageDraw, ImageFont

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
    return img, q


def plain_encode(img, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def plain_write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def plain_one(job: tuple[str, str]) -> int:
    path, out = job
    name = os.path.basename(path)
    data = plain_read(path)
    img, quality = plain_degrade(plain_decode(data), name)
    plain_write(os.path.join(out, "lr", os.path.splitext(name)[0] + ".jpg"), plain_encode(img, quality))
    return 1  # no HR file: the target is the source, which a plain script would simply keep using


def run_pool(paths: list[str], out: Path, workers: int) -> int:
    (out / "lr").mkdir(parents=True)
    chunksize = max(1, len(paths) // (workers * 16))
    with mp.get_context("fork").Pool(workers) as pool:
        done = sum(pool.imap_unordered(plain_one, [(p, str(out)) for p in paths], chunksize=chunksize))
    lr = len(os.listdir(out / "lr"))
    if done != len(paths) or lr != len(paths) or os.listdir(out) != ["lr"]:
        raise SystemExit(f"pool made {done} images, {lr} LR files and {sorted(os.listdir(out))} folders; "
                         f"expected {len(paths)} LR files in lr/ alone")
    return done


# ---- per-step profile --------------------------------------------------------------------------------------

# step -> the functions whose cumulative time it is (first match wins); "bookkeeping" is the rest of one image
FLOW_STEPS = {"read": ["storage.py:read_bytes"],
              "decode": ["images.py:open_plain_png", "images.py:open_image", "images.py:normalize_mode"],
              "encode": ["degrade.py:encode_jpeg", "recipes.py:encode_png"], "write": ["storage.py:write_bytes"],
              "degrade": ["recipes.py:apply_recipe"]}
PLAIN_STEPS = {"read": ["plain_read"], "decode": ["plain_decode"], "degrade": ["plain_degrade"],
               "encode": ["plain_encode"], "write": ["plain_write"]}


def cumulative(stats: pstats.Stats, wanted: list[str]) -> float:
    total = 0.0
    for (filename, _, func), (_, _, _, cum, _) in stats.stats.items():
        if any(w == func or w == f"{os.path.basename(filename)}:{func}" for w in wanted):
            total += cum
    return total


def step_profile(profile: cProfile.Profile, steps: dict[str, list[str]], whole: str, n: int) -> dict:
    stats = pstats.Stats(profile)
    ms = {step: cumulative(stats, names) for step, names in steps.items()}
    if "encode" in ms and "degrade" in ms and whole == "crappify_one":
        ms["degrade"] -= cumulative(stats, ["degrade.py:encode_jpeg"])  # the JPEG step encodes inside the recipe
    per_image = cumulative(stats, [whole])
    ms["bookkeeping"] = per_image - sum(ms.values())
    ms["total"] = per_image
    return {step: round(1000 * v / n, 3) for step, v in ms.items()}


def profile_steps(src: Path, workdir: Path, n: int) -> dict:
    """ms per image by step, the flow's crappify_one against the plain loop, on n images in this process."""
    from datetime import UTC, datetime

    from pixelmill.tasks.prep.crappify import PairJob, crappify_one
    from pixelmill.tasks.prep.recipes import get_recipe

    paths = sorted(str(p) for p in src.iterdir())[:n]
    out, flow_out = workdir / "profile-plain", workdir / "profile-flow"
    recipe, now = get_recipe("lesson7"), datetime.now(UTC)
    jobs = [PairJob(f"file://{p}", hashlib.sha256(Path(p).read_bytes()).hexdigest(), "train", None, "bench")
            for p in paths]
    sides = {}
    for side in ("plain", "flow", "plain", "flow"):  # interleaved; the second of each is kept
        # New files every pass, as in a real run: replacing existing files costs more on some filesystems
        # (ext4 flushes a file renamed or truncated over an old one).
        for folder in (out, flow_out):
            shutil.rmtree(folder, ignore_errors=True)
        (out / "lr").mkdir(parents=True)
        profile = cProfile.Profile()
        profile.enable()
        if side == "plain":
            for p in paths:
                plain_one((p, str(out)))
        else:
            for job in jobs:
                row = crappify_one(job, recipe, 0, "profile", f"file://{flow_out}", 10**8, now)
                if row["status"] != "ok":
                    raise SystemExit(f"profile: {row['error']}")
        profile.disable()
        sides[side] = (step_profile(profile, FLOW_STEPS, "crappify_one", n) if side == "flow"
                       else step_profile(profile, PLAIN_STEPS, "plain_one", n))
    shutil.rmtree(out)
    shutil.rmtree(flow_out)
    sides["flow_over_plain"] = round(sides["flow"]["total"] / sides["plain"]["total"], 3)
    return {"images": n, "unit": "ms per image (cProfile, in one process)", **sides}


# ---- measuring ----------------------------------------------------------------------------------------

def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run_benchmark("crappify", args.workdir, lambda workdir: run(args, workdir))


def run(args: argparse.Namespace, workdir: Path) -> dict:
    import PIL
    import prefect
    from prefect import flow

    from pixelmill.flows.crappify import run_crappify
    from pixelmill.flows.ingest import ingest
    from pixelmill.tasks.core.catalog import Catalog
    from pixelmill.tasks.core.layout import Layout
    from pixelmill.tasks.core.pairs import SOURCE
    from pixelmill.tasks.prep.crappify import CrappifyConfig, auto_shard_size, close_pools

    loadavg_before = [round(v, 2) for v in os.getloadavg()]
    ws = str(workdir / "workspace")
    source_folder = photos_or_generated(args.source.resolve(), workdir / "generated")
    n1, n2 = args.sizes
    sources, paths = {}, {}
    for n in (n1, n2):
        log(f"building {n} input files ...")
        sources[n] = build_inputs(source_folder, workdir / f"src{n}", n)
        paths[n] = sorted(str(p) for p in (workdir / f"src{n}").iterdir())

    @flow(name="bench-warmup")
    def warmup() -> int:
        return 1

    log("starting the Prefect server (not timed) ...")
    warmup()
    for n in (n1, n2):
        log(f"ingesting {n} images (not timed) ...")
        ingest(str(workdir / f"src{n}"), dataset=f"bench{n}", workspace=ws)
    log(f"profiling the steps of one image on {PROFILE_IMAGES} images ...")
    steps = profile_steps(workdir / f"src{n1}", workdir, min(PROFILE_IMAGES, n1))

    best: dict[str, dict] = {}
    reference: dict[int, dict[str, str]] = {}

    def keep(key: str, seconds: float, **info) -> None:
        if key not in best or seconds < best[key]["seconds"]:
            best[key] = {"seconds": round(seconds, 3), **info}

    for r in range(args.repeats):
        for k in args.workers:
            for n in (n1, n2):  # pool and flow interleaved, so load from elsewhere hits both alike
                load = round(os.getloadavg()[0], 2)
                children = children_cpu()
                t0 = time.perf_counter()
                run_pool(paths[n], workdir / "pool", k)
                seconds = time.perf_counter() - t0
                cpu = {"pool_child": round(children_cpu() - children, 2)}  # the Pool's children, all waited for
                shutil.rmtree(workdir / "pool")
                log(f"repeat {r} workers {k} n {n}: pool {seconds:.2f} s ({n / seconds:.0f}/s, load {load}), "
                    f"cpu {cpu}")
                keep(f"pool_w{k}_n{n}", seconds, load1_before=load, cpu_seconds=cpu,
                     pool_busy=round(cpu["pool_child"] / (seconds * k), 3))
                for runner in args.runner:
                    name = f"bench-{runner}-w{k}-n{n}-{r}"
                    cfg = CrappifyConfig(recipe="lesson7", workers=k, name=name)
                    load = round(os.getloadavg()[0], 2)
                    before = process_tree_cpu()
                    t0 = time.perf_counter()
                    run_crappify(f"bench{n}", cfg, workspace=ws, runner=runner)
                    seconds = time.perf_counter() - t0
                    cpu = cpu_by_role(before, process_tree_cpu())
                    close_pools()
                    log(f"  flow {runner}: {seconds:.2f} s ({n / seconds:.0f}/s), cpu {cpu}")
                    pairs = Catalog(ws).read("pairs", name, columns=["status", "error", "hr_kind"])
                    ok = pairs["status"].to_pylist().count("ok")
                    if pairs.num_rows != n or ok != n:
                        errors = [e for e in pairs["error"].to_pylist() if e][:5]
                        raise SystemExit(f"{name}: {pairs.num_rows} rows, {ok} ok; expected {n}. Errors: {errors}")
                    if set(pairs["hr_kind"].to_pylist()) != {SOURCE}:  # the same work as the pool: LR files only
                        raise SystemExit(f"{name}: HR kinds {set(pairs['hr_kind'].to_pylist())}, expected {SOURCE!r}")
                    folder = Path(Layout.of(ws).paired_set(name).removeprefix("file://"))
                    digest = tree_digest(folder)
                    reference.setdefault(n, digest)
                    if digest != reference[n]:
                        differ = sorted(k for k in digest.keys() | reference[n].keys()
                                        if digest.get(k) != reference[n].get(k))
                        raise SystemExit(f"{name}: {len(differ)} files differ from the first run's, e.g. {differ[:3]}")
                    shutil.rmtree(folder)
                    busy = cpu.get("pool_child", 0.0) / (seconds * k) if runner == "threads" else None
                    keep(f"flow_{runner}_w{k}_n{n}", seconds, load1_before=load, pairs_ok=ok, cpu_seconds=cpu,
                         **({"pool_busy": round(busy, 3)} if busy is not None else {}))

    rates, fixed, ratios, scaling, dask_ratio, child_ms = {}, {}, {}, {}, {}, {}
    for side in ["pool", *(f"flow_{r}" for r in args.runner)]:
        for k in args.workers:
            small, large = best[f"{side}_w{k}_n{n1}"], best[f"{side}_w{k}_n{n2}"]
            rate, intercept = marginal(n1, n2, small["seconds"], large["seconds"])
            rates[f"{side}_w{k}"], fixed[f"{side}_w{k}"] = rate, intercept
            if side != "flow_dask":  # a LocalCluster's workers are gone (uncounted) when the flow returns
                spent = large["cpu_seconds"]["pool_child"] - small["cpu_seconds"]["pool_child"]
                child_ms[f"{side}_w{k}"] = round(1000 * spent / (n2 - n1), 3)
    k1 = min(args.workers)
    for k in args.workers:
        for runner in args.runner:
            ratios[f"flow_{runner}_w{k}"] = round(rates[f"flow_{runner}_w{k}"] / rates[f"pool_w{k}"], 3)
        for side in ["pool", *(f"flow_{r}" for r in args.runner)]:
            if k > k1:
                scaling[f"{side}_w{k}"] = round(rates[f"{side}_w{k}"] / (rates[f"{side}_w{k1}"] * k / k1), 3)
        if "dask" in args.runner and "threads" in args.runner:
            dask_ratio[f"w{k}"] = round(rates[f"flow_dask_w{k}"] / rates[f"flow_threads_w{k}"], 3)
    flow_keys = [f"flow_threads_w{k}" for k in args.workers if "threads" in args.runner]
    met = {
        "flow_vs_pool": all(ratios[key] >= TARGETS["flow_vs_pool"] for key in flow_keys),
        "fixed_cost_seconds": all(fixed[key] <= TARGETS["fixed_cost_seconds"] for key in flow_keys),
        "scaling_efficiency": all(v >= TARGETS["scaling_efficiency"] for key, v in scaling.items()
                                  if key.startswith("flow_threads")),
        "dask_vs_threads": all(v >= TARGETS["dask_vs_threads"] for v in dask_ratio.values()),
    }
    big = {k: best[f"flow_threads_w{k}_n{n2}"]["cpu_seconds"] for k in args.workers if "threads" in args.runner}
    prefect_share = {f"w{k}": round((c.get("parent", 0) + c.get("prefect_server", 0)) / sum(
        v for key, v in c.items() if key != "pool_child_max"), 4) for k, c in big.items()}
    return {
        "benchmark": "crappify",
        "recipe": "lesson7",
        "sizes": args.sizes,
        "workers": args.workers,
        "runners": args.runner,
        "repeats": args.repeats,
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "shard_size": {f"w{k}_n{n}": auto_shard_size(n, k) for k in args.workers for n in (n1, n2)},
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "marginal_images_per_s": rates,
        "ratio_flow_vs_pool": ratios,
        "scaling_efficiency": scaling,
        "ratio_dask_vs_threads": dask_ratio,
        "fixed_cost_seconds": fixed,
        "parent_and_server_cpu_share": prefect_share,
        "child_cpu_ms_per_image": child_ms,
        "targets": TARGETS,
        "met": met,
        "steps_ms_per_image": steps,
        "runs": best,
        "notes": ("rates are marginal between the two sizes (best of the repeats for each size); cpu_seconds by "
                  "process: parent (flow engine, plan, catalog, gallery), prefect_server, forkserver, pool_child "
                  "(sum; pool_child_max the busiest one), dask; pool_busy: pool children's CPU over wall x workers; "
                  "child_cpu_ms_per_image: the marginal CPU of the processes making pairs, per pair; every flow "
                  "run's end waits up to 1 s for Prefect's flow-run heartbeat thread (it sleeps in 1 s steps)"),
        "source": sources[n2],
        "versions": {"python": platform.python_version(), "prefect": prefect.__version__,
                     "pillow": PIL.__version__},
    }


if __name__ == "__main__":
    main()
