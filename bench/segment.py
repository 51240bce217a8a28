"""Segmentation benchmark: CamVid, the train flow against a plain PyTorch script, same data and CPU budget.

    python bench/segment.py [--minutes 15]                       # the README command's defaults vs the script
    python bench/segment.py --minutes 5 --no-plain --set augment.scale_range=[0.75,1.25]   # an ablation

Ingests ../shared/data/camvid/train (+trainannot) as the train split and val (+valannot) as the valid split
of one data set (not timed), then, in one run and each for `--minutes` of training:
- plain: the obvious ~90-line script: every image and label loaded once at `--input-scale` resolution,
  random crops and flips, the same small U-Net from scratch, cross-entropy with median-frequency weights,
  AdamW with a one-cycle schedule; predictions upsampled to the labels' size for scoring;
- flow: `pixelmill train segmentation --dataset camvid --classes camvid --max-minutes M` with the task's
  defaults (TrainConfig(task="segmentation")), `--set FIELD=JSON` changing one field at a time for ablations
  (dotted for nested fields), then the evaluate flow on the valid split.
Both are scored by the same confusion matrix on the 101 val images (class 11, Unlabelled, ignored), and
against the majority-class baseline. JSON on stdout; ratios are flow / plain.
Published anchors (test split, pretrained encoders, long GPU training): SegNet 46.4 mIoU, Bayesian SegNet 63.1.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from _common import run_benchmark, train_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def ingest_camvid(workspace: str) -> None:
    from pixelmill.flows.ingest import ingest
    from pixelmill.tasks.prep.ingest import IngestConfig

    for folder, split in (("train", (1.0, 0.0, 0.0)), ("val", (0.0, 1.0, 0.0))):
        ingest(str(DATA / folder), dataset="camvid", workspace=workspace,
               config=IngestConfig(masks=str(DATA / f"{folder}annot"), split_fractions=split))


def plain_loop(workspace: str, minutes: float, arch_kwargs: dict, input_scale: float, crop: int,
               batch_size: int, lr: float) -> dict:
    """The plain script, written the way one would without pixelmill (data from the same catalog rows)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from pixelmill.models.factory import build_model
    from pixelmill.tasks.core.catalog import Catalog
    from pixelmill.tasks.core.classes import CAMVID
    from pixelmill.tasks.training.metrics import ConfusionMatrix
    from pixelmill.tasks.training.segdata import load_segmentation_records, median_frequency_weights

    def load(records, scale):
        xs, ys = [], []
        for r in records:
            img, lab = Image.open(r.uri.removeprefix("file://")).convert("RGB"), Image.open(r.mask_uri.removeprefix("file://"))
            size = (round(img.width * scale), round(img.height * scale))
            xs.append(torch.from_numpy(np.asarray(img.resize(size, Image.Resampling.BILINEAR))).permute(2, 0, 1))
            ys.append(torch.from_numpy(np.asarray(lab, np.uint8).copy()).long())
        return torch.stack(xs), torch.stack(ys)

    catalog = Catalog(workspace)
    train_records, _ = load_segmentation_records(catalog, "camvid", "train")
    val_records, _ = load_segmentation_records(catalog, "camvid", "valid")
    x_train, y_full = load(train_records, input_scale)
    y_train = F.interpolate(y_full[:, None].float(), size=x_train.shape[-2:], mode="nearest")[:, 0].long()
    x_val, y_val = load(val_records, input_scale)
    weights = torch.tensor(median_frequency_weights(train_records, CAMVID), dtype=torch.float32)
    torch.manual_seed(0)
    model = build_model({"arch": "unet-plain", "in_channels": 3, "out_channels": 12, **arch_kwargs}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, ignore_index=11)
    budget, steps, started = minutes * 60, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < budget:
        t = elapsed / budget  # one-cycle by time: warm up over 25%, cosine down
        lr_now = lr * (0.04 + 0.96 * (1 - math.cos(math.pi * t / 0.25)) / 2 if t < 0.25
                       else (1 + math.cos(math.pi * (t - 0.25) / 0.75)) / 2)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        idx = torch.randint(0, len(x_train), (batch_size,))
        h, w = x_train.shape[-2:]
        top, left = int(torch.randint(0, h - crop + 1, ())), int(torch.randint(0, w - crop + 1, ()))
        x = x_train[idx, :, top:top + crop, left:left + crop].float() / 255
        y = y_train[idx, top:top + crop, left:left + crop]
        if torch.rand(()) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    train_seconds = time.perf_counter() - started
    cm = ConfusionMatrix(12, 11)
    model.eval()
    with torch.inference_mode():
        for i in range(len(x_val)):
            logits = model(x_val[i:i + 1].float() / 255)
            logits = F.interpolate(logits, size=y_val.shape[-2:], mode="bilinear", align_corners=False)
            cm.update(logits.argmax(1)[0], y_val[i])
    scores = cm.compute()
    return {"steps": steps, "train_images_per_s": round(steps * batch_size / train_seconds, 2),
            "miou": scores["miou"], "global_acc": scores["global_acc"], "mean_class_acc": scores["mean_class_acc"]}


def flow_run(workspace: str, cfg) -> dict:
    from pixelmill.flows.evaluate import evaluate
    from pixelmill.flows.train import train

    trained = train("camvid", "bench-camvid", cfg, workspace=workspace)
    result = evaluate(trained["model"], "camvid", split="valid", workspace=workspace)
    m, b = result["model_scores"], result["baseline_scores"]
    return {"config": cfg.model_dump(mode="json", exclude_defaults=False, include={
                "arch", "arch_kwargs", "crop", "batch_size", "lr", "augment", "loss_resolution", "val_every",
                "loader_workers", "class_weights"}),
            "steps": trained["steps"], "train_images_per_s": round(trained["images_per_s"], 2),
            "miou": m["miou"], "global_acc": m["global_acc"], "mean_class_acc": m["mean_class_acc"],
            "majority_baseline": {k: round(v, 4) for k, v in b.items()}, "valid_images": result["images"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of each side")
    parser.add_argument("--input-scale", type=float, default=0.5, help="resolution the model works at")
    parser.add_argument("--crop", type=int, default=128, help="training crop at the model's resolution")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--base", type=int, default=32, help="unet-plain width")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=JSON",
                        help="change one TrainConfig field of the flow (repeatable), e.g. lr=0.001")
    parser.add_argument("--no-plain", action="store_true", help="run the flow only (ablations)")
    args = parser.parse_args(argv)
    if not DATA.exists():
        parser.error(f"{DATA} not found: this benchmark reads the shared CamVid images")
    cfg = train_config({"task": "segmentation", "classes": "camvid", "max_minutes": args.minutes}, args.overrides)

    def run(workdir: Path) -> dict:
        import os

        import torch

        workspace = str(workdir / "workspace")
        started = time.perf_counter()
        ingest_camvid(workspace)
        setup = time.perf_counter() - started
        kwargs = {"base": args.base}
        plain = None if args.no_plain else plain_loop(workspace, args.minutes, kwargs, args.input_scale, args.crop,
                                                      args.batch_size, args.lr)
        flow = flow_run(workspace, cfg)
        result = {"benchmark": "segment", "minutes_each": args.minutes, "overrides": args.overrides,
                  "plain_script": {"input_scale": args.input_scale, "crop_at_model_resolution": args.crop,
                                   "batch_size": args.batch_size, "lr": args.lr, "arch": "unet-plain",
                                   "arch_kwargs": kwargs},
                  "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                  "setup_seconds_untimed": round(setup, 1), "flow": flow, "plain": plain}
        if plain:
            result |= {"ratio_miou_flow_vs_plain": round(flow["miou"] / plain["miou"], 3),
                       "ratio_images_per_s_flow_vs_plain": round(flow["train_images_per_s"]
                                                                 / plain["train_images_per_s"], 3)}
        return result | {"loadavg_end": os.getloadavg()}

    run_benchmark("segment", args.workdir, run)


if __name__ == "__main__":
    main()
