"""The `pixelmill` command line. Each command builds a typed config and calls a flow.

Errors the user can fix print as one line plus a hint (exit code 1); `pixelmill --debug ...` shows the traceback.
Set PREFECT_API_URL to run against a Prefect server; otherwise Prefect starts its embedded one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import PurePosixPath
from typing import Annotated

import typer
from pydantic import ValidationError

from pixelmill.tasks.core.errors import ConfigError, PixelmillError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="pixelmill: restore and segment image archives in bulk, as Prefect flows.")
catalog_app = typer.Typer(no_args_is_help=True, help="Look at the Parquet catalog.")
app.add_typer(catalog_app, name="catalog")
train_app = typer.Typer(no_args_is_help=True, help="Train models.")
app.add_typer(train_app, name="train")
models_app = typer.Typer(no_args_is_help=True, help="The model registry.")
app.add_typer(models_app, name="models")

_debug = {"on": False, "verbose": False}
Workspace = Annotated[str | None, typer.Option(envvar="PIXELMILL_WORKSPACE", show_default="./pixelmill-workspace",
                                                help="workspace URL: catalog, models, data sets")]


def config_error(exc: ValidationError, what: str) -> ConfigError:
    fields = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in exc.errors())
    return ConfigError(f"invalid {what}: {fields}", "fix the value(s) named above; see --help for defaults")


@contextlib.contextmanager
def user_errors():
    """Turn the errors a user can fix into one readable line plus a hint."""
    try:
        yield
    except (PixelmillError, ValidationError) as exc:
        if _debug["on"]:
            raise
        if isinstance(exc, ValidationError):
            exc = config_error(exc, exc.title)
        # one line each, whatever the message holds (a recipe's errors come one per line)
        typer.secho(f"error: {one_line(exc.message)}", err=True, fg="red")
        if exc.hint:
            typer.echo(f"hint: {one_line(exc.hint)}", err=True)
        raise typer.Exit(1) from None


def one_line(text: str) -> str:
    first, *rest = [line.strip() for line in text.splitlines() if line.strip()] or [""]
    return first + (": " + "; ".join(rest) if rest else "")


def start_prefect() -> None:
    """After the CLI's checks, before the flow: say which Prefect server runs it and keep its console quiet."""
    from pixelmill.flows.console import choose_server, quiet_prefect_console

    typer.echo(choose_server())
    if not (_debug["on"] or _debug["verbose"]):
        quiet_prefect_console()


def next_command(command: str, workspace: str | None) -> str:
    """`command` as the user can paste it: with --workspace when it came from the flag, not the environment."""
    given = workspace and workspace != os.environ.get("PIXELMILL_WORKSPACE")
    return f"next: {command}" + (f" --workspace {workspace}" if given else "")


@app.callback()
def options(debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks")] = False,
            verbose: Annotated[bool, typer.Option("--verbose", help="show Prefect's logs and the full tables")]
            = False) -> None:
    _debug["on"], _debug["verbose"] = debug, verbose


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="folder, s3://bucket/prefix, memory://..., or a .zip/.tar archive")],
    dataset: Annotated[str | None, typer.Option(help="data set name (default: the source's base name)")] = None,
    masks: Annotated[str | None, typer.Option(help="mask folder URL with the same file names, or a name "
                                                   "pattern like '{stem}_P.png'")] = None,
    workspace: Workspace = None,
    shard_size: Annotated[int, typer.Option(help="files per task")] = 100,
    split: Annotated[str, typer.Option(help="train,valid,test fractions")] = "0.8,0.1,0.1",
    force: Annotated[bool, typer.Option(help="re-read unchanged files too")] = False,
) -> None:
    """Catalog the images under SOURCE into the `images` table (bad files become error rows)."""
    with user_errors():
        from pixelmill.flows import preflight
        from pixelmill.tasks.core.catalog import check_name
        from pixelmill.tasks.prep.ingest import IngestConfig, dataset_name_for

        cfg = IngestConfig(masks=masks, shard_size=shard_size, split_fractions=preflight.parse_split_fractions(split),
                           force=force)
        check_name(dataset or dataset_name_for(source), "dataset name")
        preflight.require_source(source)
        start_prefect()
        from pixelmill.flows.console import progress_bar
        from pixelmill.flows.ingest import ingest as ingest_flow
        from pixelmill.tasks.reports import images_markdown

        with progress_bar():
            summary = ingest_flow(source, dataset=dataset, workspace=workspace, config=cfg)
        if _debug["verbose"]:
            typer.echo(images_markdown(summary, f"ingest {summary['dataset']}") + "\n")
        name, status = summary["dataset"], summary["status"]
        typer.echo(f"{name}: {summary['files']} files in the catalog, {status.get('ok', 0)} ok, "
                   f"{status.get('error', 0)} errors, {summary['duplicates']} duplicates; split "
                   + ", ".join(f"{k} {v}" for k, v in summary["split"].items()))
        typer.echo(f"this run: {summary['new_or_changed']} new or changed, {summary['unchanged']} unchanged, "
                   f"{summary['other_files']} non-image files skipped")
        typer.echo(f"details: pixelmill catalog show images --dataset {name}")
        typer.echo(next_command(f"pixelmill crappify --dataset {name} --recipe lesson7", workspace))


@app.command()
def crappify(
    dataset: Annotated[str, typer.Option(help="the ingested data set to degrade")],
    recipe: Annotated[str, typer.Option(help="a recipe name (see `pixelmill recipes`) or a YAML file")] = "lesson7",
    split: Annotated[str, typer.Option(help="train, valid, test or all")] = "all",
    name: Annotated[str | None, typer.Option(help="paired set name (default: DATASET-RECIPE)")] = None,
    seed: Annotated[int, typer.Option(help="global seed")] = 0,
    workers: Annotated[int | None, typer.Option(help="processes making pairs (default: this machine's cores; "
                                                     "with --dask, the LocalCluster's workers)")] = None,
    shard_size: Annotated[int | None, typer.Option(help="images per task (default: about 4 tasks per worker, "
                                                        "16 to 1024 images each)")] = None,
    dask: Annotated[str | None, typer.Option(help="'local' for a Dask LocalCluster, or a scheduler address")]
    = None,
    workspace: Workspace = None,
) -> None:
    """Make a paired training set (HR target, degraded LR input) from a data set's ok images."""
    with user_errors():
        from pixelmill.flows import preflight
        from pixelmill.tasks.prep.crappify import CrappifyConfig

        cfg = CrappifyConfig(recipe=recipe, split=split, name=name, seed=seed, shard_size=shard_size,
                             **({"workers": workers} if workers is not None else {}))
        preflight.require_recipe(recipe)
        preflight.require_dataset(workspace, dataset)
        start_prefect()
        from pixelmill.flows.console import progress_bar
        from pixelmill.flows.crappify import run_crappify
        from pixelmill.tasks.reports import pairs_markdown

        with progress_bar():
            summary = run_crappify(dataset, cfg, workspace=workspace, dask=dask)
        if _debug["verbose"]:
            typer.echo(pairs_markdown(summary, f"crappify {summary['set_name']}") + "\n")
        set_name, status = summary["set_name"], summary["status"]
        typer.echo(f"{set_name}: {summary['pairs']} pairs, {status.get('ok', 0)} ok, {status.get('error', 0)} "
                   "errors; split " + ", ".join(f"{k} {v}" for k, v in summary["split"].items()))
        typer.echo(f"this run: {summary['made']} made, {summary['existing']} already there")
        typer.echo(f"files: {summary['workspace']}/datasets/{set_name}/{{split}}/{{hr,lr}}/")
        task = "colorize" if PurePosixPath(recipe).stem == "colorize" else "restoration"
        typer.echo(next_command(f"pixelmill train {task} --pairs {set_name} --name {set_name}-model "
                                "--max-minutes 10", workspace))


@app.command()
def recipes() -> None:
    """List the shipped degradation recipes and their steps."""
    with user_errors():
        from pixelmill.tasks.prep.recipes import list_recipes

        for recipe in list_recipes():
            typer.secho(f"{recipe.name}  (hash {recipe.recipe_hash}, LR as {recipe.lr_format})", bold=True)
            typer.echo(f"  {recipe.description}")
            for label, ops in (("target", recipe.target), ("steps", recipe.steps)):
                for op in ops:
                    typer.echo(f"  {label}: {json.dumps(op.model_dump(mode='json'))}")
        typer.echo("\nYour own: a YAML file with the same fields, e.g. steps: [{op: blur, sigma: [0.5, 2]}, "
                   "{op: jpeg, quality: [30, 70]}]")


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
        from pixelmill.tasks.core.catalog import check_name
        from pixelmill.tasks.training.config import TrainConfig

        fields = load_yaml_config(config) if config else {}
        fields |= {k: v for k, v in flags.items() if v is not None} | {"task": task}
        if gan_from:
            fields["gan"] = (fields.get("gan") or {}) | {"init_from": gan_from}
        train_config = TrainConfig(**fields)
        check_name(name, "model name")
        if task == "segmentation":
            preflight.require_dataset(workspace, source)
        else:
            preflight.require_pairs(workspace, source)
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
        data = "--dataset" if task == "segmentation" else "--pairs"
        typer.echo(next_command(f"pixelmill evaluate {summary['model']} {data} {source} --promote production",
                                workspace))


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="NAME, NAME:VERSION, NAME@ALIAS or a model folder URL")],
    pairs: Annotated[str | None, typer.Option(help="restoration: the paired set to score on")] = None,
    dataset: Annotated[str | None, typer.Option(help="segmentation: the data set (with masks) to score on")] = None,
    split: Annotated[str, typer.Option(help="train, valid or test")] = "valid",
    promote: Annotated[str | None, typer.Option(help="move this alias here if the model wins")] = None,
    workspace: Workspace = None,
) -> None:
    """Score a model against its baseline: PSNR/SSIM (restoration) or mean IoU (segmentation).

    Restoration is compared with bicubic (or the input), segmentation with always answering the majority class."""
    with user_errors():
        if (pairs is None) == (dataset is None):
            raise ConfigError("give the data to score on: --pairs SET (restoration) or --dataset NAME (segmentation)",
                              "`pixelmill catalog show pairs` and `pixelmill catalog show images` list them")
        from pixelmill.flows import preflight

        preflight.require_model(workspace, model)
        preflight.require_split(split)
        if pairs:
            preflight.require_pairs(workspace, pairs)
        else:
            preflight.require_dataset(workspace, dataset)
        start_prefect()
        from pixelmill.flows.evaluate import evaluate as evaluate_flow

        s = evaluate_flow(model, pairs or dataset, split=split, promote=promote, workspace=workspace)
        typer.echo(f"{s['model']} on {s['source']}/{s['split']} ({s['images']} images)")
        for label, m in (("model", s["model_scores"]), (f"baseline ({s['baseline']})", s["baseline_scores"])):
            typer.echo(f"  {label:24s} " + "  ".join(f"{k} {v:.4g}" for k, v in m.items() if k != "images"))
        typer.echo(f"  gain over the baseline: {s['gain']:+.4g} ({s['score_key']})")
        if promote:
            typer.echo(s["promotion_reason"])
        use = "segment" if dataset else "enhance"
        ref = f"{s['model'].split(':')[0]}@{promote}" if s.get("promoted") else s["model"]
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
            typer.echo(f"{row['name']}:{row['version']:5s} {row['arch']:14s} x{row['scale']} {row['steps']:>6} steps "
                       f"on {row['pairs_set']}  {psnr}  {' '.join('@' + t for t in tags)}")


@models_app.command("promote")
def models_promote(
    model: Annotated[str, typer.Argument(help="NAME:VERSION (or NAME, NAME@ALIAS)")],
    alias: Annotated[str, typer.Argument(help="e.g. production")],
    workspace: Workspace = None,
) -> None:
    """Point an alias at a model version (no checks: `evaluate --promote` is the checked way)."""
    with user_errors():
        from pixelmill.tasks.core import registry
        from pixelmill.tasks.core.settings import workspace_url

        ws = workspace_url(workspace)
        mv = registry.resolve(ws, model)
        previous = registry.aliases(ws, mv.name).get(alias)
        registry.set_alias(ws, mv, alias)
        typer.echo(f"{mv.name}@{alias} -> {mv.version}")
        if os.environ.get("PREFECT_API_URL"):  # deployments on that server may re-apply the alias
            from pixelmill.flows.events import PROMOTED, emit_promoted

            if emit_promoted(mv, alias, ws, previous=previous):
                typer.echo(f"sent {PROMOTED} to {os.environ['PREFECT_API_URL']}")


@models_app.command("archs")
def models_archs() -> None:
    """The architectures the factory can build."""
    from pixelmill.models.factory import list_archs

    typer.echo("\n".join(list_archs()))


@app.command()
def enhance(
    model: Annotated[str, typer.Argument(help="NAME, NAME:VERSION, NAME@ALIAS or a model folder URL")],
    input_image: Annotated[str, typer.Argument(help="image URL or path")],
    output_image: Annotated[str, typer.Argument(help="where to write the result (.png, .jpg, .webp)")],
    workspace: Workspace = None,
) -> None:
    """Run a model on one image."""
    with user_errors():
        from pixelmill.flows import preflight
        from pixelmill.tasks.core import registry, storage
        from pixelmill.tasks.core.images import ImageError, normalize_mode, open_image, output_format

        fmt = output_format(output_image)
        # the input and the reference first: loading the model (and torch) takes seconds
        try:
            original, _ = open_image(storage.read_bytes(input_image))
            img = normalize_mode(original)
        except (ImageError, ValueError, OSError) as exc:  # normalize_mode: an odd mode PIL cannot convert
            raise PixelmillError(f"{input_image}: {exc}", "give a readable JPEG/PNG/WebP/TIFF/BMP/GIF") from None
        mv = preflight.require_model(workspace, model)
        from pixelmill.tasks.inference.enhance import alpha_of, encode_like, enhance_image, with_alpha
        from pixelmill.tasks.training.loop import pick_device

        net, config, _ = registry.load(mv)
        if config.get("task") == "segmentation":
            raise PixelmillError(f"{mv.ref} is a segmentation model", f"run `pixelmill segment {model} IN OUT`")
        out, note = with_alpha(enhance_image(net, config, img, pick_device()), alpha_of(original), fmt)
        if note:
            typer.echo(f"warning: {note}", err=True)
        storage.write_bytes(output_image, encode_like(out, output_image))
        typer.echo(f"{mv.ref}: {img.width}x{img.height} -> {out.width}x{out.height} written to {output_image}")


@app.command()
def segment(
    model: Annotated[str, typer.Argument(help="a segmentation model: NAME, NAME:VERSION, NAME@ALIAS or a folder URL")],
    input_image: Annotated[str, typer.Argument(help="image URL or path")],
    output_mask: Annotated[str, typer.Argument(help="where to write the class-index mask (.png)")],
    overlay: Annotated[bool, typer.Option(help="also write the classes' colours blended on the image, as "
                                               "OUT.overlay.png")] = False,
    workspace: Workspace = None,
) -> None:
    """Run a segmentation model on one image: a PNG of class indices (palette-coloured by the class map)."""
    with user_errors():
        if not output_mask.lower().endswith(".png"):
            raise ConfigError(f"{output_mask}: a mask is written as PNG (lossless class indices)", "name it *.png")
        from pixelmill.tasks.core import registry, storage
        from pixelmill.tasks.core.images import ImageError, decode_image
        from pixelmill.tasks.core.settings import workspace_url

        try:
            img = decode_image(storage.read_bytes(input_image))
        except ImageError as exc:
            raise PixelmillError(f"{input_image}: {exc}", "give a readable JPEG/PNG/WebP/TIFF/BMP/GIF") from None
        mv = registry.resolve(workspace_url(workspace), model)
        from pixelmill.tasks.inference.segment import mask_png, overlay_png, segment_image
        from pixelmill.tasks.training.loop import pick_device

        net, config, _ = registry.load(mv)
        if config.get("task") != "segmentation":
            raise PixelmillError(f"{mv.ref} is a {config.get('task')} model, not a segmentation model",
                                 f"run `pixelmill enhance {model} IN OUT`")
        indices, classes = segment_image(net, config, img, pick_device())
        storage.write_bytes(output_mask, mask_png(indices, classes))
        typer.echo(f"{mv.ref}: {img.width}x{img.height} -> class mask written to {output_mask}")
        if overlay:
            path = output_mask[: -len(".png")] + ".overlay.png"
            storage.write_bytes(path, overlay_png(img, indices, classes))
            typer.echo(f"overlay written to {path}")


@app.command()
def apply(
    model: Annotated[str, typer.Argument(help="NAME, NAME:VERSION, NAME@ALIAS or a model folder URL")],
    input: Annotated[str, typer.Option("--input", help="folder, s3://bucket/prefix, a .zip/.tar archive, or "
                                                       "dataset:NAME (its ok images)")],
    output: Annotated[str, typer.Option("--output", help="folder or s3://bucket/prefix; outputs mirror the "
                                                         "inputs' names")],
    workspace: Workspace = None,
    batch_size: Annotated[int | None, typer.Option(
        help="tiles per forward (default: what fits --max-memory on a GPU; on a CPU only small tiles share one)",
    )] = None,
    tile: Annotated[int | None, typer.Option(
        help="tile side in pixels; larger images go in overlapping tiles (default: 512 on a GPU, sized to the "
             "model's width on a CPU)")] = None,
    overlap: Annotated[int, typer.Option(help="pixels neighbouring tiles share (blended)")] = 32,
    format: Annotated[str, typer.Option("--format", help="restoration outputs: png, jpeg or webp")] = "png",
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality")] = 92,
    workers: Annotated[int, typer.Option(help="shards at once (threads sharing the model, or Dask workers)")] = 1,
    dask: Annotated[str | None, typer.Option(help="'local' for a Dask LocalCluster, or a scheduler address")]
    = None,
    force: Annotated[bool, typer.Option(help="reprocess inputs this model version already did")] = False,
    limit: Annotated[int | None, typer.Option(help="process at most N inputs this run")] = None,
    overlay: Annotated[bool, typer.Option(help="segmentation: also write the classes blended on the image")]
    = False,
    max_memory: Annotated[str | None, typer.Option(help="memory budget of a worker, e.g. 2GiB or 1500MB "
                                                        "(default: half the machine)")] = None,
    shard_size: Annotated[int, typer.Option(help="images per task")] = 64,
) -> None:
    """Run a model over every new image under --input; results and a `predictions` table row for each."""
    with user_errors():
        from pixelmill.flows import preflight
        from pixelmill.tasks.inference.apply import ApplyConfig, parse_bytes

        fields = dict(batch_size=batch_size, tile=tile, overlap=overlap, format=format, quality=quality,
                      workers=workers, force=force, limit=limit, overlay=overlay, shard_size=shard_size)
        if max_memory:
            fields["max_memory"] = parse_bytes(max_memory)
        apply_config = ApplyConfig(**fields).check()
        preflight.require_model(workspace, model)
        if input.startswith("dataset:"):
            preflight.require_dataset(workspace, input.removeprefix("dataset:"))
        else:
            preflight.require_source(input)
        start_prefect()
        from pixelmill.flows.apply import run_apply

        s = run_apply(model, input, output, apply_config, workspace=workspace, dask=dask)
        typer.echo(f"{s['model']} ({s['task']}): {s['processed']} processed, {s['skipped']} skipped, "
                   f"{s['failed']} failed, {s['images_per_s']} images/s")
        for e in s["errors"][:10]:
            typer.echo(f"  error {e['input_uri']}: {e['error']}")
        typer.echo(f"outputs: {s['output']}")
        typer.echo(f"rows: `pixelmill catalog show predictions --dataset {s['model'].split(':')[0]}`")


def load_yaml_config(path: str) -> dict:
    import yaml

    from pixelmill.tasks.core import storage

    try:
        data = yaml.safe_load(storage.read_bytes(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", "fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config fields", "e.g. `steps: 500`")
    return data


@catalog_app.command("show")
def catalog_show(
    table: Annotated[str, typer.Argument(help="table name")] = "images",
    dataset: Annotated[str | None, typer.Option(help="only this data set (group)")] = None,
    workspace: Workspace = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """A readable summary of a catalog table."""
    with user_errors():
        from pixelmill.flows import preflight
        from pixelmill.tasks.core.catalog import Catalog
        from pixelmill.tasks.core.settings import workspace_url
        from pixelmill.tasks.reports import (
            images_markdown,
            images_summary,
            markdown_table,
            pairs_markdown,
            pairs_summary,
            round_values,
        )

        catalog = Catalog(workspace_url(workspace))
        catalog.table_url(table)  # an unknown table says which ones exist
        preflight.require_workspace(workspace)
        if dataset is not None:
            what = {"images": "data set", "pairs": "paired set"}.get(table, "model")
            preflight.require_group(workspace, table, dataset, what, f"the {table} table has no rows yet")
        data = catalog.read(table, dataset)
        if data.num_rows == 0:
            raise PixelmillError(f"table {table!r} is empty in {catalog.workspace}",
                                 "run `pixelmill ingest SOURCE` first, or pass the right --workspace")
        if table == "images":
            summary = images_summary(data)
            text = images_markdown(summary, f"{table} table")
        elif table == "pairs":
            summary = pairs_summary(data)
            text = pairs_markdown(summary, f"{table} table")
        elif table == "predictions":
            from pixelmill.tasks.reports import predictions_markdown, predictions_summary

            summary = predictions_summary(data)
            text = predictions_markdown(summary, f"{table} table")
        else:
            summary = {"rows": data.num_rows, "head": data.slice(0, 20).to_pylist()}
            cols = [c for c in data.column_names if c not in ("created_at", "uri", "metrics", "evaluation_id")]
            text = f"## {table} table ({data.num_rows} rows)\n\n" + markdown_table(
                cols, [[r[c] for c in cols] for r in map(round_values, data.slice(0, 20).to_pylist())])
        typer.echo(json.dumps(summary, indent=1, default=str) if as_json else text)
        typer.echo(f"\nParquet files: {catalog.table_url(table)}/*/*.parquet")


@app.command()
def server(
    port: Annotated[int, typer.Option(help="port of the API and UI")] = 4200,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
) -> None:
    """Start a Prefect server in the background for flow commands and the UI to share.

    Flow commands then use it instead of starting an embedded one (about 10 s each), and its UI shows their runs."""
    with user_errors():
        from pathlib import Path

        from pixelmill.flows.console import DEFAULT_LOCAL_SERVER, start_server

        home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
        log = home / "pixelmill-server.log"
        pid, url = start_server(host, port, log)
        if pid is None:
            typer.echo(f"a Prefect server already answers at {url}; UI {url.removesuffix('/api')}")
            return
        typer.echo(f"Prefect server running at {url}; UI {url.removesuffix('/api')} (log: {log})")
        if url != DEFAULT_LOCAL_SERVER:
            typer.echo(f"for pixelmill commands to find it: export PIXELMILL_LOCAL_PREFECT_URL={url}")
        typer.echo(f"stop it: kill {pid}")


@app.command()
def demo(
    directory: Annotated[str, typer.Option("--dir", help="local folder for the demo's bucket and workspace")]
    = "./pixelmill-demo",
    train_minutes: Annotated[float, typer.Option(help="CPU minutes to train the demo's x2 model (0: skip)")] = 2.0,
    segment_minutes: Annotated[float, typer.Option(help="CPU minutes to train the demo's segmentation model "
                                                        "(0: skip)")] = 1.0,
    segment_steps: Annotated[int, typer.Option(help="at most this many segmentation training steps")] = 400,
) -> None:
    """Run the whole pipeline on built-in sample photographs, with a local folder as the bucket."""
    with user_errors():
        from pixelmill.flows.demo import demo as demo_flow
        from pixelmill.flows.demo import print_report

        report = demo_flow(directory, train_minutes, segment_minutes, segment_steps)
        print_report(report)
        if report["mismatches"]:
            raise typer.Exit(1)


def main() -> None:
    # The embedded server takes 10-15 s to start on a small machine; Prefect's default limit is 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sys.exit(app())


if __name__ == "__main__":
    main()
