"""Model commands: `train restoration|colorize|segmentation`, `evaluate`, `models list|promote|archs|import|export`.
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from pixelmill.flows.cli.common import (
    TtaOption,
    Workspace,
    app,
    load_yaml_config,
    models_app,
    next_command,
    start_prefect,
    train_app,
    user_errors,
)
from pixelmill.tasks.core.errors import ConfigError, PixelmillError
from pixelmill.tasks.core.model_tasks import model_task

Pairs = Annotated[str, typer.Option(help="paired set name (from `pixelmill crappify`)")]


ModelName = Annotated[str, typer.Option(help="model name in the registry")]


Arch = Annotated[str | None, typer.Option(help="unet-plain, unet-resnet18/34/50 (`pixelmill models archs`)")]


Loss = Annotated[str | None, typer.Option(help="l1, charbonnier, feature, ssim or l1+ssim")]


ConfigFile = Annotated[str | None, typer.Option(help="YAML file with TrainConfig fields; flags override it")]


Steps = Annotated[int | None, typer.Option(help="optimizer steps")]


MaxMinutes = Annotated[float | None, typer.Option(help="time budget; the schedule fits it")]


Resume = Annotated[bool, typer.Option(help="continue from the model's last checkpoint")]


GanFrom = Annotated[str | None, typer.Option(help="GAN fine-tuning: start from this model (NAME@ALIAS...)")]


@train_app.command("restoration")
def train_restoration(pairs: Pairs, name: ModelName, arch: Arch = None, loss: Loss = None, config: ConfigFile = None,
                      steps: Steps = None, max_minutes: MaxMinutes = None, resume: Resume = False,
                      gan_from: GanFrom = None, workspace: Workspace = None) -> None:
    """Train a restoration U-Net (super-resolution, de-JPEG, de-watermark, denoise) on a paired set."""
    run_training("restoration", pairs, name, config, {"arch": arch, "loss": loss, "steps": steps,
                                                      "max_minutes": max_minutes}, gan_from, resume, workspace)


@train_app.command("colorize")
def train_colorize(pairs: Pairs, name: ModelName, arch: Arch = None, loss: Loss = None, config: ConfigFile = None,
                   steps: Steps = None, max_minutes: MaxMinutes = None, resume: Resume = False,
                   gan_from: GanFrom = None, workspace: Workspace = None) -> None:
    """Train a colorization U-Net (grey input, colour target) on a paired set, e.g. one made with --recipe colorize."""
    run_training("colorize", pairs, name, config, {"arch": arch, "loss": loss, "steps": steps,
                                                   "max_minutes": max_minutes}, gan_from, resume, workspace)


@train_app.command("segmentation")
def train_segmentation(
    dataset: Annotated[str, typer.Option(help="an ingested data set with masks (`pixelmill ingest ... --masks`)")],
    name: ModelName,
    classes: Annotated[str, typer.Option(help="class map: a preset (camvid, scenes) or a YAML file")] = "camvid",
    arch: Arch = None, config: ConfigFile = None, steps: Steps = None, max_minutes: MaxMinutes = None,
    resume: Resume = False, workspace: Workspace = None,
) -> None:
    """Train a U-Net for semantic segmentation (one class per pixel) on images and their masks."""
    run_training("segmentation", dataset, name, config, {"arch": arch, "classes": classes, "steps": steps,
                                                         "max_minutes": max_minutes}, None, resume, workspace)


def run_training(task: str, source: str, name: str, config: str | None, flags: dict, gan_from: str | None,
                 resume: bool, workspace: str | None) -> None:
    """YAML config, then flags, then the subcommand's task; run the train flow and print its summary."""
    with user_errors():
        from pixelmill.flows import preflight
        from pixelmill.tasks.core.names import check_name
        from pixelmill.tasks.training.config import TrainConfig

        fields = load_yaml_config(config) if config else {}
        fields |= {k: v for k, v in flags.items() if v is not None} | {"task": task}
        if gan_from:
            fields["gan"] = (fields.get("gan") or {}) | {"init_from": gan_from}
        train_config = TrainConfig(**fields)
        check_name(name, "model name")
        require = {"images": preflight.require_dataset, "pairs": preflight.require_pairs}
        require[model_task(task).data](workspace, source)
        if gan_from:
            preflight.require_model(workspace, gan_from)
        if resume:
            preflight.require_checkpoint(workspace, name)
        start_prefect()
        from pixelmill.flows.train import train

        summary = train(source, name, train_config, workspace=workspace, resume=resume)
        scale = f", x{summary['scale']}" if summary.get("scale") else ""
        typer.echo(f"trained {summary['model']}: {summary['steps']} steps in {summary['seconds']:.0f} s "
                   f"({summary['images_per_s']:.1f} images/s){scale}")
        shown = {k: v for k, v in summary["metrics"].items() if k.startswith("val_")}
        if shown:
            typer.echo("last validation: " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items()))
        typer.echo(f"weights: {summary['uri']}")
        data = f"{model_task(task).data}:{source}"
        typer.echo(next_command(f"pixelmill evaluate {summary['model']} --data {data} --promote production",
                                workspace))


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="NAME, NAME:VERSION, NAME@ALIAS or a model folder URL")],
    data: Annotated[str | None, typer.Option(help="what to score on: pairs:NAME (a paired set: restoration, "
                                                  "colorize) or images:NAME (a data set with masks: segmentation)")]
    = None,
    pairs: Annotated[str | None, typer.Option(help="the same as --data pairs:NAME")] = None,
    dataset: Annotated[str | None, typer.Option(help="the same as --data images:NAME")] = None,
    split: Annotated[str, typer.Option(help="train, valid or test")] = "valid",
    promote: Annotated[str | None, typer.Option(help="move this alias here if the model wins")] = None,
    tta: TtaOption = False,
    workspace: Workspace = None,
) -> None:
    """Score a model against its baseline: PSNR/SSIM (restoration) or mean IoU (segmentation).

    Restoration is compared with bicubic (or the input), segmentation with always answering the majority class."""
    with user_errors():
        given = [ref for ref in (data, pairs and f"pairs:{pairs}", dataset and f"images:{dataset}") if ref]
        if len(given) != 1:
            raise ConfigError("give the data to score on once: --data pairs:NAME (restoration, colorize) or "
                              "--data images:NAME (segmentation)",
                              "`pixelmill catalog show pairs` and `pixelmill catalog show images` list them")
        from pixelmill.flows import preflight
        from pixelmill.tasks.core.tables import parse_data_ref

        card = preflight.require_model(workspace, model)
        preflight.require_split(split)
        source, wants = parse_data_ref(given[0]), model_task(card.task).data
        if source.table != wants:  # before looking the name up: the kind is wrong whatever the name
            raise ConfigError(f"{model} is a {card.task} model: it scores on {wants}:NAME, not {source}",
                              f"`pixelmill catalog show {wants}` lists them")
        preflight.require_data(workspace, str(source))
        start_prefect()
        from pixelmill.flows.evaluate import evaluate as evaluate_flow

        s = evaluate_flow(model, source.name, split=split, promote=promote, workspace=workspace, tta=tta)
        typer.echo(f"{s['model']}{' (self-ensemble)' if tta else ''} on {s['source']}/{s['split']} "
                   f"({s['images']} images)")
        for label, m in (("model", s["model_scores"]), (f"baseline ({s['baseline']})", s["baseline_scores"])):
            typer.echo(f"  {label:24s} " + "  ".join(f"{k} {v:.4g}" for k, v in m.items() if k != "images"))
        typer.echo(f"  gain over the baseline: {s['gain']:+.4g} ({s['score_key']})")
        if promote:
            typer.echo(s["promotion_reason"])
        use = model_task(card.task).command
        ref = f"{card.name}@{promote}" if s.get("promoted") else s["model"]
        typer.echo(next_command(f"pixelmill {use} {ref} IMAGE OUT.png", workspace))


@models_app.command("list")
def models_list(workspace: Workspace = None) -> None:
    """Every model version with its aliases and last validation."""
    with user_errors():
        from pixelmill.tasks.core import registry
        from pixelmill.tasks.core.catalog import Catalog
        from pixelmill.tasks.core.settings import workspace_url

        ws = workspace_url(workspace)
        rows = Catalog(ws).read("models").to_pylist()
        if not rows:
            raise PixelmillError(f"no models in {ws}", "train one with `pixelmill train restoration`")
        for row in sorted(rows, key=lambda r: (r["name"], int(r["version"][1:]))):
            tags = [a for a, v in registry.aliases(ws, row["name"]).items() if v == row["version"]]
            metrics = json.loads(row["metrics"] or "{}")
            psnr = f"val Y-PSNR {metrics['val_psnr_y']:.2f} dB" if "val_psnr_y" in metrics else ""
            steps = "-" if row["steps"] is None else row["steps"]  # an imported or hand-made version
            typer.echo(f"{row['name']}:{row['version']:5s} {row['arch']:14s} x{row['scale']} {steps:>6} steps "
                       f"on {row['source']}  {psnr}  {' '.join('@' + t for t in tags)}")


@models_app.command("promote")
def models_promote(
    model: Annotated[str, typer.Argument(help="NAME:VERSION (or NAME, NAME@ALIAS)")],
    alias: Annotated[str, typer.Argument(help="e.g. production")],
    expect: Annotated[str | None, typer.Option(
        help="move it only if it still points at this version (`none`: only if it is not set yet)")] = None,
    workspace: Workspace = None,
) -> None:
    """Point an alias at a model version (no score checks: `evaluate --promote` is the checked way).

    Without --expect it moves the alias whatever it points at; with it, the move is a compare-and-swap that
    is refused when someone moved the alias since you looked."""
    with user_errors():
        from pixelmill.tasks.core import registry
        from pixelmill.tasks.core.settings import workspace_url

        ws = workspace_url(workspace)
        card = registry.resolve(ws, model)
        expected = registry.ANY if expect is None else None if expect.lower() == "none" else expect
        previous = registry.set_alias(ws, card, alias, expected=expected)
        typer.echo(f"{card.name}@{alias} -> {card.version}")
        if os.environ.get("PREFECT_API_URL"):  # deployments on that server may re-apply the alias
            from pixelmill.flows.events import PROMOTED, emit_promoted

            if emit_promoted(card, alias, ws, previous=previous):
                typer.echo(f"sent {PROMOTED} to {os.environ['PREFECT_API_URL']}")


@models_app.command("archs")
def models_archs() -> None:
    """The architectures the factory can build."""
    from pixelmill.models.archs import ARCH_NAMES

    width = max(map(len, ARCH_NAMES))
    typer.echo("\n".join(f"{name:{width}s}  {about}" for name, about in ARCH_NAMES.items()))


@models_app.command("import")
def models_import(
    file: Annotated[str, typer.Argument(help="a checkpoint trained elsewhere: .pth, .pt, .ckpt or .safetensors "
                                             "(path or URL)")],
    name: ModelName,
    task: Annotated[str, typer.Option(help="restoration (spandrel's architectures); segmentation is refused")]
    = "restoration",
    licence: Annotated[str, typer.Option(help="the licence its authors give it, kept on the model card")]
    = "unknown",
    workspace: Workspace = None,
) -> None:
    """Register a model trained elsewhere (Real-ESRGAN, SwinIR, HAT, ... any architecture spandrel detects) as a
    new version: enhance, apply, evaluate and promote then work on it like on a trained one."""
    with user_errors():
        from pixelmill.tasks.core.model_files import import_model
        from pixelmill.tasks.core.settings import workspace_url

        card = import_model(workspace_url(workspace), file, name, task=task, licence=licence)
        about = card.arch_kwargs
        typer.echo(f"imported {card.ref}: {about['spandrel_arch']} x{card.scale}, {card.in_channels} -> "
                   f"{card.out_channels} channels, from {card.source.split(':', 1)[1]} (sha256 "
                   f"{card.source_sha256[:16]}, licence {card.licence})")
        typer.echo(next_command(f"pixelmill {model_task(card.task).command} {card.ref} IMAGE OUT.png", workspace))


@models_app.command("export")
def models_export(
    model: Annotated[str, typer.Argument(help="NAME, NAME:VERSION, NAME@ALIAS or a model folder URL")],
    onnx: Annotated[str | None, typer.Option(help="write an ONNX graph here (dynamic batch, height, width)")] = None,
    folder: Annotated[str | None, typer.Option(
        help="write the Hugging Face layout here: weights.safetensors, config.json, README.md model card")] = None,
    workspace: Workspace = None,
) -> None:
    """Write a model out: an ONNX graph checked against torch with ONNX Runtime, or a folder to publish."""
    with user_errors():
        if not onnx and not folder:
            raise ConfigError("say where to export: --onnx FILE and/or --folder DIR", "e.g. --onnx model.onnx")
        from pixelmill.tasks.core.model_files import ONNX_TOLERANCE, export_folder, export_onnx
        from pixelmill.tasks.core.settings import workspace_url

        ws = workspace_url(workspace)
        if onnx:
            done = export_onnx(ws, model, onnx)
            worst = max(done["max_abs_diff"].values())
            typer.echo(f"wrote {done['uri']} ({done['bytes'] / 2**20:.1f} MiB, opset {done['opset']}): "
                       f"{done['model']}, input image {done['input']} -> output {done['output']}; ONNX Runtime "
                       f"matches torch within {worst:.2g} (<= {ONNX_TOLERANCE:g}) at "
                       f"{', '.join(done['max_abs_diff'])}")
        if folder:
            done = export_folder(ws, model, folder)
            typer.echo(f"wrote {done['uri']}: {', '.join(done['files'])} ({done['model']})")
