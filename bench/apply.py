"""Apply benchmark: the same model over the same N photos, five ways in one run.

    python bench/apply.py --n 200            # or --quick
    python bench/apply.py --n 1000 --base 16
    python bench/apply.py --n 300 --device cuda --ways forward,bare,local_1   # a GPU machine without Prefect

  forward      pure model forward on pre-decoded tensors, one image at a time: the limit (first 200 photos)
  bare         the obvious loop: read, decode, forward, encode (PNG, level 1 as the flow), write
  local_1      tasks.inference.apply.apply_local, 1 worker: the flow's work without Prefect
  local_nochecks   local_1 without the output checks (--no-checks): what the checks cost
  local_plain      local_1 without the checks and without copying metadata (--no-checks --no-metadata): with
               local_nochecks, what metadata handling costs
  flow_1       the apply flow, 1 worker
  flow_all     the apply flow, one worker per core
  rss_W_N      (with --rss-sizes) apply over the first N photos in a fresh child process, W = local
               (apply_local) or flow (the flow, which starts its own Prefect server): peak RSS of the child
               (VmHWM) and of its whole tree (server included), without this process's other ways; flat
               means the same peak for every N

Photos of 0.15-0.25 MP are cut from ../shared/data/restoration (CBSD68, CSun_Hays80), or generated when that folder
is absent. The model is an x2 restoration U-Net with random weights saved through the registry: its speed, not
its quality, is measured. Prefect's share of wall time is (flow_1 - local_1) / flow_1: the same shards in the same
order, with and without the flow around them; the embedded server is started before any timing.
Peak RSS: the sum over this process and all its descendants (the embedded Prefect server included), sampled
from /proc every 20 ms.
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_with_quick, run_benchmark  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "restoration"
MIN_PIXELS, MAX_PIXELS = 150_000, 250_000
WAYS = ("forward", "bare", "local_1", "local_nochecks", "local_plain", "flow_1", "flow_all")
FORWARD_SAMPLE = 200  # pre-decoded float tensors cost 2.4 MB per photo: the limit is measured on at most these


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and every process below it."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: ppid
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # fields[21]: rss in pages
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


class PeakRss:
    """The highest tree_rss seen while the `with` block runs."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak = every, 0
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            self._stop.wait(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n JPEGs of 0.15-0.25 MP: crops of the restoration photos at varying sizes and offsets (generated smooth
    noise when the photos are absent), so that no two inputs are the same bytes. Each carries what a camera or
    scanner writes (EXIF with artist, copyright and date, an sRGB ICC profile, an XMP title), so that metadata
    handling costs what it costs on an archive."""
    import numpy as np
    from PIL import Image, ImageCms, ImageFilter

    exif = Image.Exif()
    exif.update({0x013B: "Bench Artist", 0x8298: "(c) Bench Archive", 0x010E: "a benchmark photo",
                 0x0132: "2001:02:03 04:05:06", 0x010F: "Pixelmill", 0x0110: "Bench Camera"})
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title><rdf:Alt>'
           b'<rdf:li xml:lang="x-default">bench</rdf:li></rdf:Alt></dc:title></rdf:Description></rdf:RDF>'
           b'</x:xmpmeta>')

    rng = np.random.default_rng(seed)
    sources = sorted(p for p in DATA.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"}) \
        if DATA.is_dir() else []
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels, aspect = rng.integers(MIN_PIXELS, MAX_PIXELS), rng.uniform(0.66, 1.5)
        w, h = int((pixels * aspect) ** 0.5), int((pixels / aspect) ** 0.5)
        if sources:
            src = Image.open(sources[i % len(sources)]).convert("RGB")
            if src.width < w or src.height < h:
                src = src.resize((max(w, src.width), max(h, src.height)), Image.Resampling.BICUBIC)
            x, y = rng.integers(0, src.width - w + 1), rng.integers(0, src.height - h + 1)
            img = src.crop((x, y, x + w, y + h))
        else:
            noise = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(noise).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.DETAIL)
        path = folder / f"{i // 100:03d}" / f"photo{i:05d}.jpg"
        path.parent.mkdir(exist_ok=True)
        img.save(path, quality=90, exif=exif, icc_profile=icc, xmp=xmp)
        paths.append(path)
    return paths


def register_model(workspace: str, base: int, depth: int) -> str:
    import torch

    from pixelmill.models.factory import build_model
    from pixelmill.tasks.core import registry

    torch.manual_seed(0)
    model = build_model({"arch": "unet-plain", "scale": 2, "base": base, "depth": depth, "residual": True})
    config = {"task": "restoration", "scale": 2, "in_channels": 3, "input_range": [0, 1]}
    return registry.save(workspace, "bench", model, config, {"source": "pairs:random-weights"}).ref


def pure_forward(model, photos: list[Path], device) -> float:
    """Seconds for the model alone over every photo, decoded and converted to tensors (on the device) beforehand.
    On CUDA with fp16 autocast and channels_last, as apply runs it."""
    import numpy as np
    from PIL import Image

    from pixelmill.models.device import to_tensor
    from pixelmill.tasks.inference.runtime import make_forward

    forward = make_forward(model, device)
    tensors = [to_tensor(np.asarray(Image.open(p).convert("RGB"))).unsqueeze(0).to(device) for p in photos]
    forward(tensors[0])  # cuDNN picks its kernels on the first call
    started = time.perf_counter()
    for x in tensors:
        forward(x)  # on CUDA the copy back to the CPU waits for the result
    return time.perf_counter() - started


def bare_loop(model, photos: list[Path], out: Path, device) -> float:
    """The plainest loop: decode, the whole image through the model at once, encode as PNG (level 1, as apply)
    with the input's EXIF, ICC profile and XMP copied the cheap way, through Pillow (no tiles, no threads)."""
    import numpy as np
    import torch
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from pixelmill.models.device import to_tensor, to_uint8

    started = time.perf_counter()
    for p in photos:
        with Image.open(p) as im:
            x = to_tensor(np.asarray(im.convert("RGB"))).unsqueeze(0).to(device)
            info = PngInfo()
            if "xmp" in im.info:
                info.add_itxt("XML:com.adobe.xmp", im.info["xmp"].decode("utf-8"))
            keep = {"exif": im.info.get("exif", b""), "icc_profile": im.info.get("icc_profile"), "pnginfo": info}
        with torch.inference_mode():
            result = Image.fromarray(to_uint8(model(x)[0]))
        target = out / p.relative_to(p.parents[1]).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        result.save(target, "PNG", compress_level=1, **keep)
    return time.perf_counter() - started


CHILD = """
import json, os, sys, time
sys.path.insert(0, sys.argv[6])
from apply import PeakRss
from pixelmill.tasks.inference.apply import ApplyConfig, apply_local
ws, source, out, limit, device, _, way, shard_size = sys.argv[1:9]
cfg = ApplyConfig(limit=int(limit), device=device, format="png", shard_size=int(shard_size))
with PeakRss() as tree:
    started = time.perf_counter()
    if way == "flow":
        from pixelmill.flows.apply import run_apply
        run_apply("bench", source, out, cfg, workspace=ws)
    else:
        apply_local(ws, "bench", source, out, cfg)
    seconds = time.perf_counter() - started
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"seconds": seconds, "peak_rss": int(status["VmHWM"].split()[0]) * 1024, "tree": tree.peak}))
"""


def child_rss(workspace: str, source: str, out: Path, n: int, device: str, way: str, shard_size: int) -> dict:
    """apply over the first n inputs in a fresh process (`way`: local, or flow with its own Prefect server):
    seconds, the peak RSS of that process (VmHWM) and of its whole tree (sampled, the server included)."""
    done = subprocess.run([sys.executable, "-c", CHILD, workspace, source, str(out), str(n), device,
                           str(Path(__file__).resolve().parent), way, str(shard_size)], capture_output=True, text=True,
                          env=os.environ | {"PREFECT_HOME": str(out) + "-prefect-home"})  # its own server and db
    if done.returncode:
        raise RuntimeError(f"the {way} child failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"images": n, "seconds": round(result["seconds"], 2), "images_per_s": round(n / result["seconds"], 3),
            "peak_rss_mib": round(result["peak_rss"] / 2**20), "tree_peak_rss_mib": round(result["tree"] / 2**20)}


def run(workdir: Path, args) -> dict:
    import torch
    from PIL import Image

    from pixelmill.tasks.core import registry
    from pixelmill.tasks.inference.apply import ApplyConfig, apply_local
    from pixelmill.tasks.inference.runtime import load_model

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    photos = make_photos(workdir / "photos", args.n)
    workspace = str(workdir / "ws")
    ref = register_model(workspace, args.base, args.depth)
    model, device = load_model(registry.resolve(workspace, ref), args.device)
    megapixels = sum(w * h for w, h in (Image.open(p).size for p in photos)) / 1e6
    flows = {"flow_1", "flow_all"} & set(args.ways)
    if flows:
        from pixelmill.flows.apply import run_apply

        run_apply(ref, str(photos[0].parent), str(workdir / "warm"), ApplyConfig(limit=1, device=args.device),
                  workspace=workspace)

    cfg = dict(format="png", shard_size=args.shard_size, device=args.device)
    ways: dict[str, dict] = {}

    def measure(name: str, fn, images: int = args.n) -> None:
        if name not in args.ways:
            return
        print(f"{name} ...", file=sys.stderr)
        with PeakRss() as rss:
            seconds = fn()
        ways[name] = {"images": images, "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 3),
                      "peak_rss_mib": round(rss.peak / 2**20)}
        print(f"{name}: {ways[name]}", file=sys.stderr)

    def timed(fn):
        def go():
            started = time.perf_counter()
            fn()
            return time.perf_counter() - started
        return go

    source = str(workdir / "photos")
    measure("forward", lambda: pure_forward(model, photos[:FORWARD_SAMPLE], device), min(args.n, FORWARD_SAMPLE))
    measure("bare", lambda: bare_loop(model, photos, workdir / "out-bare", device))
    measure("local_1", timed(lambda: apply_local(workspace, ref, source, str(workdir / "out-local"),
                                                 ApplyConfig(workers=1, **cfg))))
    measure("local_nochecks", timed(lambda: apply_local(workspace, ref, source, str(workdir / "out-nochecks"),
                                                        ApplyConfig(workers=1, checks=False, **cfg))))
    measure("local_plain", timed(lambda: apply_local(workspace, ref, source, str(workdir / "out-plain"),
                                                     ApplyConfig(workers=1, checks=False, metadata=False, **cfg))))
    measure("flow_1", timed(lambda: run_apply(ref, source, str(workdir / "out-flow-1"),
                                              ApplyConfig(workers=1, **cfg), workspace=workspace)))
    measure("flow_all", timed(lambda: run_apply(ref, source, str(workdir / "out-flow-all"),
                                                ApplyConfig(workers=cores, **cfg), workspace=workspace)))

    for way in args.rss_ways:
        for n in args.rss_sizes:
            name = f"rss_{way}_{n}"
            print(f"{name} ...", file=sys.stderr)
            ways[name] = child_rss(workspace, source, workdir / f"out-{name}", n, args.device, way,
                                   args.shard_size)
            print(f"{name}: {ways[name]}", file=sys.stderr)
    rate = {name: way["images_per_s"] for name, way in ways.items()}
    ratios = {f"{a}_vs_{b}": round(rate[a] / rate[b], 3) for a in ("flow_all", "flow_1", "local_1")
              for b in ("bare", "forward") if a in rate and b in rate}
    result = {
        "benchmark": "apply", "images": args.n, "megapixels": round(megapixels, 1), "cores": cores,
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "model": {"arch": "unet-plain", "scale": 2, "base": args.base, "depth": args.depth, "weights": "random"},
        "torch": torch.__version__, "shard_size": args.shard_size, "ways": ways, "ratios": ratios,
        "peak_rss_mib_max": max(w["peak_rss_mib"] for w in ways.values()),
        "targets": {"flow_vs_bare": ">= 1.0", "flow_vs_forward": ">= 0.85", "peak_rss": "<= 1536 MiB",
                    "prefect_share": "< 0.02"},
    }
    if {"local_1", "local_nochecks"} <= ways.keys():
        result["checks_share_of_apply"] = round((ways["local_1"]["seconds"] - ways["local_nochecks"]["seconds"])
                                                / ways["local_1"]["seconds"], 4)
    if {"local_nochecks", "local_plain"} <= ways.keys():
        result["metadata_share_of_apply"] = round(
            (ways["local_nochecks"]["seconds"] - ways["local_plain"]["seconds"]) / ways["local_1"]["seconds"], 4)
    if {"flow_1", "local_1"} <= ways.keys():
        result["prefect_share_of_wall"] = round((ways["flow_1"]["seconds"] - ways["local_1"]["seconds"])
                                                / ways["flow_1"]["seconds"], 4)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="photos")
    parser.add_argument("--quick", action="store_true", help="n=200")
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=int, default=16, help="U-Net width")
    parser.add_argument("--depth", type=int, default=2, help="U-Net depth")
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--rss-sizes", type=lambda s: [int(v) for v in s.split(",") if v], default=[],
                        help="e.g. 100,400: peak RSS of apply in a fresh child process for each many photos")
    parser.add_argument("--rss-ways", type=lambda s: s.split(","), default=["local", "flow"],
                        help="local (apply_local alone), flow (the flow and its own Prefect server), or both")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (apply's default)")
    parser.add_argument("--ways", type=lambda s: s.split(","), default=list(WAYS),
                        help=f"comma-separated, of {','.join(WAYS)} (the flows need Prefect)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    args = parse_with_quick(parser, argv)
    run_benchmark("apply", Path(args.workdir) if args.workdir else None, lambda workdir: run(workdir, args))


if __name__ == "__main__":
    main()
