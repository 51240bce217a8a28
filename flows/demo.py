"""The demo: the whole pipeline on built-in sample photographs, a local folder standing in for the bucket.

    make demo                 # or: pixelmill demo --dir ./pixelmill-demo

It checks its own result: one catalog row per sample file and no other, every photograph an ok row with the
right size and format, every broken file an error row of the right kind.
"""

from __future__ import annotations

import os
from collections import Counter

from prefect import flow

from pixelmill.flows.apply import apply
from pixelmill.flows.crappify import crappify
from pixelmill.flows.evaluate import evaluate
from pixelmill.flows.ingest import ingest
from pixelmill.flows.train import train
from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.prep.crappify import CrappifyConfig
from pixelmill.tasks.prep.ingest import IngestConfig
from pixelmill.tasks.prep.samples import Expected, write_sample_photos
from pixelmill.tasks.prep.scenes import write_synthetic_scenes
from pixelmill.tasks.training.config import TrainConfig


def check_catalog(rows: list[dict], expected: list[Expected], bucket: str) -> list[str]:
    """What differs between the catalog and what the sample files must give (empty when all is right):
    exactly one row per sample file, no other rows, and each row's status, size, format or error kind."""
    names = {storage.join(bucket, exp.name): exp.name for exp in expected}
    rows_per_uri = Counter(r["uri"] for r in rows)
    problems = [f"{uri}: a catalog row for a file that is not a sample" for uri in rows_per_uri if uri not in names]
    problems += [f"{names[uri]}: {n} catalog rows, expected one" for uri, n in rows_per_uri.items()
                 if uri in names and n > 1]
    by_uri = {r["uri"]: r for r in rows}
    for exp in expected:
        row = by_uri.get(storage.join(bucket, exp.name))
        if row is None:
            problems.append(f"{exp.name}: no catalog row")
        elif exp.error_kind and (row["status"] != "error" or not row["error"].startswith(exp.error_kind)):
            problems.append(f"{exp.name}: expected error {exp.error_kind}, got {row['status']} {row['error']}")
        elif not exp.error_kind and ((row["status"], row["width"], row["height"], row["format"])
                                     != ("ok", exp.width, exp.height, exp.format)):
            problems.append(f"{exp.name}: expected ok {exp.format} {exp.width}x{exp.height}, got {row['status']} "
                            f"{row['format']} {row['width']}x{row['height']} {row['error'] or ''}".rstrip())
    return problems


SCENE_COUNT = 48  # enough for a minute of training to beat the majority class clearly (measured: mIoU 0.8)


@flow(name="demo")
def demo(directory: str = "./pixelmill-demo", train_minutes: float = 2.0, segment_minutes: float = 1.0,
         segment_steps: int = 400) -> dict:
    """Ingest the sample bucket and check the catalog, crappify it (lesson 7 and x2), train a small x2
    super-resolution U-Net for `train_minutes` on the CPU, evaluate it against bicubic, promote it and apply
    it to the bucket; then train and check a segmentation model on synthetic scenes."""
    directory = os.path.abspath(directory)
    bucket, workspace = storage.join(directory, "bucket"), storage.join(directory, "workspace")
    expected = write_sample_photos(bucket)
    # a larger valid split than usual: the sample set is small and evaluation wants a few images
    summary = ingest(bucket, dataset="samples", workspace=workspace,
                     config=IngestConfig(split_fractions=(0.7, 0.3, 0.0)))
    rows = Catalog(workspace).read("images", "samples").to_pylist()
    mismatches = check_catalog(rows, expected, bucket)
    pairs = crappify("samples", CrappifyConfig(recipe="lesson7", shard_size=8), workspace=workspace)
    if pairs["status"] != {"ok": summary["status"].get("ok", 0)}:
        mismatches.append(f"crappify: expected one ok pair per ok photograph, got {pairs['status']}")
    sr_pairs = crappify("samples", CrappifyConfig(recipe="sr-x2", shard_size=8), workspace=workspace)
    trained = evaluation = None
    if train_minutes > 0:
        trained = train(sr_pairs["set_name"], "demo-sr-x2", TrainConfig(
            arch="unet-plain", steps=100_000, max_minutes=train_minutes, batch_size=8, crop=48, val_every=100),
            workspace=workspace)
        evaluation = evaluate(trained["model"], sr_pairs["set_name"], split="valid", promote="production",
                              workspace=workspace)
    applied = lineage = None
    if trained:
        # the nightly job in miniature: the promoted model (or, if it lost, the one just trained) over the bucket
        ref = "demo-sr-x2@production" if evaluation["promoted"] else trained["model"]
        applied = apply(ref, input=bucket, output=storage.join(directory, "enhanced"), workspace=workspace)
        if applied["processed"] != summary["status"].get("ok", 0):
            mismatches.append(f"apply: expected every ok photograph enhanced, got {applied['processed']} "
                              f"processed and {applied['failed']} failed")
        lineage = trace_one_output(workspace, applied["run_id"], mismatches)
    segmentation = None
    if segment_minutes > 0:
        segmentation = demo_segmentation(directory, workspace, segment_minutes, segment_steps)
        scores = segmentation["evaluation"]
        if not scores["model_scores"]["miou"] > scores["baseline_scores"]["miou"]:
            mismatches.append(f"segmentation: mean IoU {scores['model_scores']['miou']:.3f} does not beat the "
                              f"majority class's {scores['baseline_scores']['miou']:.3f}")
    return {"bucket": bucket, "workspace": workspace, "summary": summary, "pairs": pairs,
            "trained": trained, "evaluation": evaluation, "applied": applied, "segmentation": segmentation,
            "lineage": lineage, "mismatches": mismatches}


SHOWN_OUTPUT = "rocket-exif-rotated"  # a phone photo with EXIF: its output's lineage is the one the demo prints


def trace_one_output(workspace: str, run_id: str, mismatches: list[str]) -> dict | None:
    """The lineage of one output of the demo's apply run, checked: it reaches the model, its paired set and the
    source images it was trained on (their sha256 as ingested)."""
    from pixelmill.tasks.core.lineage import lineage_of_file

    rows = Catalog(workspace).read("predictions", "demo-sr-x2", columns=["input_uri", "output_uri", "status", "run_id"])
    outputs = sorted((r for r in rows.to_pylist() if r["run_id"] == run_id and r["status"] == "ok"),
                     key=lambda r: (SHOWN_OUTPUT not in r["input_uri"], r["input_uri"]))
    if not outputs:
        mismatches.append("lineage: the apply run has no ok output to trace")
        return None
    lineage = lineage_of_file(workspace, outputs[0]["output_uri"])
    examples = lineage["training"]["examples"] if lineage.get("training") else []
    if not examples or not all(e.get("image_sha256_matches") for e in examples):
        mismatches.append(f"lineage: {outputs[0]['output_uri']} does not reach its training images")
    return lineage


def demo_segmentation(directory: str, workspace: str, minutes: float, steps: int) -> dict:
    """Synthetic street scenes with exact masks (no downloads): ingest them with their masks, train a small
    segmentation U-Net for `steps` or `minutes`, whichever ends first, and score it against always answering
    the majority class. (A step budget makes the result independent of how busy the machine is.)"""
    scenes = write_synthetic_scenes(storage.join(directory, "scenes"), SCENE_COUNT, size=(128, 96))
    ingested = ingest(scenes.images, dataset="scenes", workspace=workspace,
                      config=IngestConfig(masks=scenes.masks, split_fractions=(0.75, 0.25, 0.0)))
    trained = train("scenes", "demo-scenes", TrainConfig(
        # full resolution: the synthetic scenes are 128x96, not CamVid's 480x360 the task's defaults are set on
        task="segmentation", classes="scenes", arch="unet-plain", arch_kwargs={"base": 16, "input_scale": 1.0},
        steps=steps,
        max_minutes=minutes, batch_size=8, crop=64, val_crop=None, val_every=100), workspace=workspace)
    evaluation = evaluate(trained["model"], "scenes", split="valid", promote="production", workspace=workspace)
    return {"scenes": scenes.images, "images": ingested["files"], "trained": trained, "evaluation": evaluation}


def print_report(report: dict) -> None:
    from pixelmill.tasks.core.tables import TABLES

    print(TABLES["images"].markdown(report["summary"], "demo: images catalog"))
    print("\n" + TABLES["pairs"].markdown(report["pairs"], f"demo: paired set {report['pairs']['set_name']}"))
    print(f"\nbucket (sample photographs): {report['bucket']}")
    print(f"workspace: {report['workspace']}")
    print(f"images catalog (Parquet): {report['workspace']}/catalog/images/samples/")
    print(f"paired set (lesson7 crappify): {report['workspace']}/datasets/{report['pairs']['set_name']}/"
          "{train,valid,test}/{hr,lr}/, cataloged in catalog/pairs/")
    print("see the table: pixelmill catalog show images --workspace " + report["workspace"])
    if report["trained"]:
        e = report["evaluation"]
        print(f"\nmodel {report['trained']['model']}: {report['trained']['steps']} training steps on the CPU, "
              f"evaluated on {e['images']} held-out images")
        for label, m in (("model", e["model_scores"]), ("bicubic", e["baseline_scores"])):
            print(f"  {label:8s} Y-PSNR {m['psnr_y']:.2f} dB   Y-SSIM {m['ssim_y']:.4f}")
        print(f"  {e['promotion_reason']}")
        print(f"try it: pixelmill enhance demo-sr-x2@production IMAGE OUT.png --workspace {report['workspace']}")
    if report.get("applied"):
        a = report["applied"]
        print(f"\napplied {a['model']} to the bucket: {a['processed']} photographs enhanced, {a['failed']} failed, "
              f"{a['skipped']} skipped (already done), {a['flagged']} flagged by the checks, "
              f"{a['images_per_s']} images/s")
        print(f"  results: {a['output']}")
        print(f"  predictions table: pixelmill catalog show predictions --workspace {report['workspace']}")
    if report.get("segmentation"):
        seg, e = report["segmentation"], report["segmentation"]["evaluation"]
        print(f"\nsegmentation model {seg['trained']['model']}: {seg['trained']['steps']} steps on {seg['images']} "
              f"synthetic scenes ({seg['scenes']}), evaluated on {e['images']} held-out scenes")
        for label, m in (("model", e["model_scores"]), ("majority", e["baseline_scores"])):
            print(f"  {label:8s} mean IoU {m['miou']:.3f}   pixel accuracy {m['global_acc']:.3f}")
        print(f"  {e['promotion_reason']}")
        print(f"try it: pixelmill segment demo-scenes@production IMAGE MASK.png --overlay "
              f"--workspace {report['workspace']}")
    if report["mismatches"]:
        print("\nDEMO CHECK FAILED:\n  " + "\n  ".join(report["mismatches"]))
    else:
        s = report["summary"]["status"]
        print(f"\ndemo check passed: one catalog row per file, {s.get('ok', 0)} photographs ok with the right sizes "
              f"and formats, {s.get('error', 0)} broken files recorded as error rows, "
              f"{report['pairs']['pairs']} training pairs.")
    if os.environ.get("PREFECT_API_URL"):
        print(f"runs are in the Prefect UI of {os.environ['PREFECT_API_URL']}")
    else:
        print("see these runs in the Prefect UI: `make ui` (runs `prefect server start` on the embedded "
              "server's database), then open http://127.0.0.1:4200/runs")
    print("\nnext, in this shell (the CLI's default workspace is ./pixelmill-workspace, not the demo's):")
    print("\n".join(f"  {line}" for line in next_steps(report)))
    if report.get("lineage"):
        from pixelmill.tasks.core.lineage import render

        print("\nwhere one enhanced photograph came from (`pixelmill lineage OUTPUT`):")
        print(render(report["lineage"]))



def next_steps(report: dict) -> list[str]:
    """Commands that work as printed after the demo: the first points the CLI at the demo's workspace."""
    lines = [f"export PIXELMILL_WORKSPACE={report['workspace']}",
             "pixelmill catalog show images --dataset samples",
             f"pixelmill catalog show pairs --pairs {report['pairs']['set_name']}"]
    if report["trained"]:
        lines += ["pixelmill models list", "pixelmill enhance demo-sr-x2@production IMAGE OUT.png"]
    if report.get("lineage"):
        lines += [f"pixelmill lineage {report['lineage']['target']['uri'].removeprefix('file://')}",
                  "pixelmill lineage demo-sr-x2@production   # what that version produced",
                  f"pixelmill review {report['applied']['run_id']}   # the outputs its checks flagged"]
    if report.get("segmentation"):
        lines.append("pixelmill segment demo-scenes@production IMAGE MASK.png --overlay")
    return lines
