"""What every benchmark script shares: a scratch folder, a private Prefect home, JSON alone on stdout."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def run_benchmark(name: str, workdir: Path | None, run: Callable[[Path], dict]) -> dict:
    """Call run(workdir) and print its result as the only thing on stdout.

    Before Prefect is imported: a generous server start timeout, no analytics, a quiet console, and a private
    Prefect home (its own fresh database) unless the caller points us at a server.
    """
    own_workdir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=f"pixelmill-bench-{name}-")) if own_workdir else workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    isolated_home = "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ
    if isolated_home:
        os.environ["PREFECT_HOME"] = str(workdir / "prefect-home")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON
            result = run(workdir)
            result["prefect_home"] = "private, fresh database" if isolated_home else "caller's settings"
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return result


@contextlib.contextmanager
def s3_for_bench(workdir: Path, wanted: bool, bucket: str = "bench"):
    """With `wanted`: a SeaweedFS S3 server of the tests' kind for the benchmark, with `bucket` made and the
    AWS variables of this process (and its children) pointing at it; yields those variables ({} without)."""
    if not wanted:
        yield {}
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.seaweed import SeaweedServer

    (workdir / "seaweed").mkdir(parents=True, exist_ok=True)
    server = SeaweedServer(workdir / "seaweed")
    server.start()
    try:
        env = server.environ()
        os.environ.update(env)
        server.client().mkdir(bucket)
        yield env
    finally:
        server.stop(kill=True)


def parse_with_quick(parser, argv: list[str] | None):
    """Parse the arguments every benchmark shares the meaning of: --quick (n=200), --n and --repeats >= 1."""
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 200
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be >= 1")
    return args


def int_list(text: str) -> list[int]:
    """An argparse type: positive integers separated by commas."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def parse_with_sizes(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse a benchmark that measures at two sizes (--sizes, --quick: 200,600 and one repeat, --repeats >= 1)."""
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = [200, 600], 1
    if len(args.sizes) != 2 or args.sizes[0] >= args.sizes[1]:
        parser.error("--sizes takes two counts, the smaller first")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def marginal(n1: int, n2: int, t1: float, t2: float) -> tuple[float, float]:
    """(items/s between the two sizes, fixed seconds: the intercept); start-up costs cancel in the rate."""
    rate = (n2 - n1) / (t2 - t1) if t2 > t1 else float("inf")
    return round(rate, 1), round(t1 - n1 / rate, 3)


# ---- CPU seconds by process: this one, the Prefect server it started, pool and Dask children ----------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_tree_cpu(root: int | None = None) -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far) for `root` (default: this process) and every live descendant.

    Roles: parent (root), prefect_server (the embedded server's uvicorn), forkserver, pool_child (a process
    started by the forkserver or the parent's multiprocessing), dask (a Dask nanny, worker or scheduler),
    other. A child that already exited is not listed: its CPU went to its parent's `cutime`.
    """
    root = os.getpid() if root is None else root
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))):
            stats[int(entry)] = stat
    below, frontier = {root}, [root]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        for child in children.get(frontier.pop(), []):
            below.add(child)
            frontier.append(child)
    roles: dict[int, tuple[str, float]] = {}
    for pid in sorted(below & stats.keys()):
        cmd = _cmdline(pid)
        parent_cmd = _cmdline(stats[pid][0])
        if pid == root:
            role = "parent"
        elif "uvicorn" in cmd or "prefect.server" in cmd or " server start" in cmd:
            role = "prefect_server"
        elif "forkserver" in parent_cmd or "multiprocessing" in cmd or stats[pid][0] == root:
            role = "forkserver" if "forkserver" in cmd and "forkserver" not in parent_cmd else "pool_child"
        elif "distributed" in cmd or "dask" in cmd or "distributed" in parent_cmd:
            role = "dask"
        else:
            role = "other"
        roles[pid] = (role, stats[pid][1])
    return roles


def cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each role spent between two `process_tree_cpu` snapshots (processes that started in
    between count from zero), plus `pool_child_max`: the busiest single child, to see an uneven feed."""
    spent: dict[str, float] = {}
    busiest = 0.0
    for pid, (role, cpu) in after.items():
        delta = cpu - before.get(pid, (role, 0.0))[1]
        spent[role] = spent.get(role, 0.0) + delta
        if role == "pool_child":
            busiest = max(busiest, delta)
    out = {role: round(v, 2) for role, v in sorted(spent.items())}
    if busiest:
        out["pool_child_max"] = round(busiest, 2)
    return out


# ---- data: the shared photos when present, generated ones on a fresh machine ---------------------------------

PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def photos_or_generated(preferred: Path, scratch: Path, count: int = 68, size: tuple[int, int] = (481, 321)) -> Path:
    """`preferred` when it holds photos; else `count` generated photo-like PNGs of `size` in `scratch`.

    Generated: smooth colour fields with fine detail (upscaled noise, sharpened), so PNG decoding and encoding
    cost about what they cost on photographs; pure noise would not compress and a flat image would be free.
    """
    if preferred.is_dir() and any(p.suffix.lower() in PHOTO_SUFFIXES for p in preferred.rglob("*")):
        return preferred
    import numpy as np
    from PIL import Image, ImageFilter

    print(f"{preferred} has no photos: generating {count} into {scratch}", file=sys.stderr, flush=True)
    rng = np.random.default_rng(0)
    scratch.mkdir(parents=True, exist_ok=True)
    w, h = size
    for i in range(count):
        coarse = rng.integers(0, 256, (h // 12 + 1, w // 12 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.DETAIL)
        grain = rng.normal(0, 6, (h, w, 3))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8))
        img.save(scratch / f"generated{i:03d}.png")
    return scratch


def train_config(base: dict, overrides: list[str]):
    """A TrainConfig as the README command makes it (`base`: task, budget and what the command names), then
    `overrides`, each FIELD=JSON with dotted fields for nested ones (augment.scale_range=[0.75,1.25]):
    the benchmarks' ablations change one default at a time."""
    from pixelmill.tasks.training.config import TrainConfig

    fields = TrainConfig(**base).model_dump()
    for item in overrides:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = fields
        for part in parents:
            node = node[part]
        node[leaf] = json.loads(value)
    return TrainConfig(**fields)
