"""Training benchmarks: throughput of the train flow against a bare PyTorch loop, and a quality run.

    python bench/train.py throughput [--steps 300]
    python bench/train.py quality [--minutes 20] [--recipe sr-x4] [--set block=...] [--tta]

Both build an x2 super-resolution paired set from ../shared/data/restoration (CBSD68 + CSun_Hays80:
ingest, then crappify with the sr-x2 recipe; not timed) in a scratch workspace.
throughput: the same model, data set class, loader settings and optimizer, for the same number of steps,
    once as a bare loop and once through the `train` flow (Prefect task, validation, checkpoint, registry
    save, artifacts). Target: flow >= 0.95 x the bare loop.
quality: `pixelmill train restoration --pairs P --max-minutes M` as the README writes it (the restoration
    task's defaults; `--set FIELD=JSON` changes one for an ablation), then the `evaluate` flow on the held-out
    valid split, with `--tta` the self-ensemble too. Y-PSNR gain over bicubic; issue 19's anchors (VDSR on
    Set5): x2 >= +3.9 dB, x4 >= +2.9 dB in 60 minutes.
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import torch  # noqa: E402
from _common import photos_or_generated, train_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "restoration"


def make_pairs(workspace: str, recipe: str = "sr-x2") -> str:
    from pixelmill.flows.crappify import run_crappify
    from pixelmill.flows.ingest import ingest
    from pixelmill.tasks.prep.crappify import CrappifyConfig

    folders = [DATA / f for f in ("CBSD68", "CSun_Hays80") if (DATA / f).is_dir()]
    # A fresh machine has no shared photos: 120 generated photo-like ones stand in (the quality numbers then
    # say little about photographs; the throughput ratios still hold).
    for folder in folders or [photos_or_generated(DATA, Path(workspace) / "generated", count=120)]:
        ingest(str(folder), dataset="restoration", workspace=workspace)
    return run_crappify("restoration", CrappifyConfig(recipe=recipe), workspace=workspace)["set_name"]


def bare_loop(cfg, workspace: str, pairs: str, steps: int) -> float:
    """images/s of the obvious loop: same model, data, loader, optimizer, device, AMP and channels_last as the
    flow (fp16 autocast and channels_last on CUDA), nothing else: no schedule, validation or checkpoints."""
    from pixelmill.models.device import pick_device
    from pixelmill.tasks.training.objectives import RestorationObjective

    objective = RestorationObjective(cfg, workspace, pairs)
    device = pick_device(cfg.device)
    cuda = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    model = objective.build_model().to(device).train()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    train_ds, _ = objective.datasets(None)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                         num_workers=cfg.loader_workers, pin_memory=cuda)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    loss_fn = torch.nn.L1Loss()
    done, started = 0, time.perf_counter()
    while done < steps:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
                pred = model(x)
            loss = loss_fn(pred.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            done += 1
            if done == steps:
                break
    if cuda:
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - started)


def throughput(workspace: str, pairs: str, steps: int, repeats: int) -> dict:
    from pixelmill.flows.train import train
    from pixelmill.tasks.training.config import TrainConfig

    cfg = TrainConfig(steps=steps, val_every=steps, val_images=4)
    bare, flow, loop = [], [], []
    for i in range(repeats):  # interleaved, so both sides see the same machine load
        bare.append(bare_loop(cfg, workspace, pairs, steps))
        started = time.perf_counter()
        summary = train(pairs, f"bench-throughput-{i}", cfg, workspace=workspace)
        flow.append(steps * cfg.batch_size / (time.perf_counter() - started))
        loop.append(summary["images_per_s"])
    return {"steps": steps, "batch_size": cfg.batch_size, "crop": cfg.crop, "arch": cfg.arch,
            "loader_workers": cfg.loader_workers, "bare_images_per_s": [round(v, 2) for v in bare],
            "flow_images_per_s": [round(v, 2) for v in flow],
            "ratio_flow_vs_bare": round(max(flow) / max(bare), 3),
            "ratios_per_repeat": [round(f / b, 3) for f, b in zip(flow, bare, strict=True)],
            "flow_training_loop_images_per_s": [round(v, 2) for v in loop],
            "ratio_flow_loop_vs_bare": round(max(loop) / max(bare), 3),
            "target_ratio": 0.95, "meets_target": max(flow) / max(bare) >= 0.95,
            "flow_includes": "Prefect flow and task, one validation, checkpoint, registry save, 3-image gallery, "
                             "artifacts; the loop rate counts the training loop (with its validation) alone"}


def quality(workspace: str, pairs: str, minutes: float, overrides: list[str], tta: bool) -> dict:
    from pixelmill.flows.evaluate import evaluate
    from pixelmill.flows.train import train

    cfg = train_config({"task": "restoration", "max_minutes": minutes}, overrides)
    trained = train(pairs, "bench-quality", cfg, workspace=workspace)
    result = {"minutes": minutes, "overrides": overrides, "arch": cfg.arch, "arch_kwargs": cfg.arch_kwargs,
              "crop": cfg.crop, "batch_size": cfg.batch_size, "lr": cfg.lr, "loss": cfg.loss or "l1",
              "steps": trained["steps"], "train_images_per_s": round(trained["images_per_s"], 2)}
    for ensemble in (False, True) if tta else (False,):
        started = time.perf_counter()
        scored = evaluate(trained["model"], pairs, split="valid", workspace=workspace, tta=ensemble)
        m, b = scored["model_scores"], scored["baseline_scores"]
        result["tta" if ensemble else "plain"] = {
            "valid_images": scored["images"], "evaluate_seconds": round(time.perf_counter() - started, 1),
            "model": {k: round(v, 4) for k, v in m.items()}, "bicubic": {k: round(v, 4) for k, v in b.items()},
            "gain_psnr_y_db": round(scored["gain_psnr_y"], 3)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["throughput", "quality"])
    parser.add_argument("--steps", type=int, default=300, help="throughput: steps per side")
    parser.add_argument("--repeats", type=int, default=2, help="throughput: interleaved repeats")
    parser.add_argument("--minutes", type=float, default=20.0, help="quality: training budget")
    parser.add_argument("--recipe", default="sr-x2", help="quality: the paired set's recipe (sr-x2, sr-x4)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=JSON",
                        help="quality: change one TrainConfig field (repeatable), e.g. arch_kwargs.block='\"rcab\"'")
    parser.add_argument("--tta", action="store_true", help="quality: also score the geometric self-ensemble")
    parser.add_argument("--workdir", default=None, help="scratch workspace (default: a temporary folder)")
    args = parser.parse_args()
    workspace = args.workdir or tempfile.mkdtemp(prefix="pixelmill-bench-train-")
    started = time.perf_counter()
    pairs = make_pairs(workspace, args.recipe)
    setup = time.perf_counter() - started
    if args.what == "throughput":
        result = throughput(workspace, pairs, args.steps, args.repeats)
    else:
        result = quality(workspace, pairs, args.minutes, args.overrides, args.tta)
    print(json.dumps({"benchmark": f"train-{args.what}", "cpu_count": os.cpu_count(),
                      "torch_threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available()
                      else "cpu", "loadavg_end": os.getloadavg(), "setup_seconds_untimed": round(setup, 1),
                      "workspace": workspace, **result}, indent=1))


if __name__ == "__main__":
    main()
