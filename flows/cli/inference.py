"""Inference commands: `enhance` and `segment` (one file), `apply` (a folder, bucket, archive or data set).
"""

from __future__ import annotations

from typing import Annotated

import typer

from pixelmill.flows.cli.common import (
    WORKERS_HELP,
    Dask,
    Runner,
    TtaOption,
    Workspace,
    app,
    runner_of,
    start_prefect,
    user_errors,
)
from pixelmill.tasks.core.errors import ConfigError, PixelmillError

TileOption = Annotated[int | None, typer.Option(
    help="tile side in pixels; larger images go in overlapping tiles (default: 512 on a GPU, sized to the "
         "model's width on a CPU)")]
OverlapOption = Annotated[int, typer.Option(help="pixels neighbouring tiles share (blended)")]
MaxMemoryOption = Annotated[str | None, typer.Option(help="memory budget, e.g. 2GiB or 1500MB (default: half "
                                                          "the machine)")]
DepthOption = Annotated[str, typer.Option(help="bits per channel: auto (the input's: a 16-bit master stays 16-bit "
                                               "where the format holds it), 8 or 16")]


def one_file(workspace: str | None, model: str, input_image: str, output: str, command: str, **fields) -> None:
    """`command`'s model over one file, through apply's pipeline (same tiles, alpha and memory bound): the
    input and the reference are checked first, since loading the model (and torch) takes seconds."""
    from pixelmill.flows import preflight
    from pixelmill.tasks.core import storage
    from pixelmill.tasks.core.images import ImageError
    from pixelmill.tasks.core.model_tasks import model_task
    from pixelmill.tasks.inference.plan import ApplyConfig, parse_bytes

    if fields.get("max_memory"):
        fields["max_memory"] = parse_bytes(fields["max_memory"])
    cfg = ApplyConfig(**{k: v for k, v in fields.items() if v is not None}).check()
    data = storage.read_bytes(input_image)
    card = preflight.require_model(workspace, model)
    runs_it = model_task(card.task).command
    if runs_it != command:
        raise PixelmillError(f"{card.ref} is a {card.task} model: `pixelmill {command}` does not run it",
                             f"run `pixelmill {runs_it} {model} IN OUT`")
    from pixelmill.tasks.inference.pipeline import predict_file  # torch: once the arguments are known good

    try:
        prepared, out, encoded = predict_file(card, data, cfg, output, storage.normalize_url(input_image))
    except ImageError as exc:
        raise PixelmillError(f"{input_image}: {exc}",
                             "give a readable JPEG/PNG/WebP/TIFF/BMP/GIF/HEIC/AVIF") from None
    for note in dict.fromkeys(encoded.notes):
        typer.echo(f"note: {note}", err=True)
    if encoded.columns.get("flag"):
        typer.echo(f"flagged: {encoded.columns['flag_reason']}", err=True)
    height, width = prepared.pixels.shape[:2]
    stem = output.rsplit(".", 1)[0]
    for kind, (suffix, content) in encoded.files.items():
        path = output if kind == "output" else stem + suffix
        storage.write_bytes(path, content)
        typer.echo(f"{card.ref}: {width}x{height} -> {out.shape[1]}x{out.shape[0]} written to {path}"
                   if kind == "output" else f"{kind} written to {path}")


@app.command()
def enhance(
    model: Annotated[str, typer.Argument(help="NAME, NAME:VERSION, NAME@ALIAS or a model folder URL")],
    input_image: Annotated[str, typer.Argument(help="image URL or path")],
    output_image: Annotated[str, typer.Argument(help="where to write the result (.png, .jpg, .webp, .tif)")],
    workspace: Workspace = None,
    tile: TileOption = None,
    overlap: OverlapOption = 32,
    max_memory: MaxMemoryOption = None,
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality")] = 92,
    depth: DepthOption = "auto",
    tta: TtaOption = False,
) -> None:
    """Run a model on one image: the same pixels, metadata, colours and depth as `apply` gives it."""
    with user_errors():
        from pixelmill.tasks.core.images import output_format

        output_format(output_image)  # an unknown extension: refused before anything is read
        one_file(workspace, model, input_image, output_image, "enhance", quality=quality, tile=tile,
                 overlap=overlap, max_memory=max_memory, depth=depth, tta=tta)


@app.command()
def segment(
    model: Annotated[str, typer.Argument(help="a segmentation model: NAME, NAME:VERSION, NAME@ALIAS or a folder URL")],
    input_image: Annotated[str, typer.Argument(help="image URL or path")],
    output_mask: Annotated[str, typer.Argument(help="where to write the class-index mask (.png)")],
    overlay: Annotated[bool, typer.Option(help="also write the classes' colours blended on the image, as "
                                               "OUT.overlay.png")] = False,
    workspace: Workspace = None,
    tile: TileOption = None,
    overlap: OverlapOption = 32,
    max_memory: MaxMemoryOption = None,
    tta: TtaOption = False,
) -> None:
    """Run a segmentation model on one image: a PNG of class indices (palette-coloured by the class map)."""
    with user_errors():
        if not output_mask.lower().endswith(".png"):
            raise ConfigError(f"{output_mask}: a mask is written as PNG (lossless class indices)", "name it *.png")
        one_file(workspace, model, input_image, output_mask, "segment", overlay=overlay, tile=tile, overlap=overlap,
                 max_memory=max_memory, tta=tta)


@app.command()
def apply(
    model: Annotated[str, typer.Argument(help="NAME, NAME:VERSION, NAME@ALIAS or a model folder URL")],
    input: Annotated[str, typer.Option("--input", help="folder, s3://bucket/prefix, a .zip/.tar archive, or "
                                                       "images:NAME (a data set's ok images)")],
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
    format: Annotated[str, typer.Option("--format", help="image outputs: png, jpeg, webp, tiff, or same (the "
                                                         "input's format; PNG for BMP/GIF/HEIC/AVIF)")] = "png",
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality")] = 92,
    depth: DepthOption = "auto",
    checks: Annotated[bool, typer.Option(help="check each output against its input (colour drift, NIQE, "
                                              "clipping) and flag the suspicious ones")] = True,
    metadata: Annotated[bool, typer.Option(help="copy each input's EXIF, XMP and IPTC into its output (--no-metadata: "
                                                "only the ICC profile, DPI and provenance, e.g. to drop GPS)")] = True,
    workers: Annotated[int, typer.Option(help=WORKERS_HELP + " (threads share one loaded model)")] = 1,
    runner: Runner = None,
    dask: Dask = None,
    force: Annotated[bool, typer.Option(help="reprocess inputs this model version already did")] = False,
    limit: Annotated[int | None, typer.Option(help="process at most N inputs this run")] = None,
    overlay: Annotated[bool, typer.Option(help="segmentation: also write the classes blended on the image")]
    = False,
    max_memory: Annotated[str | None, typer.Option(help="memory budget of a worker, e.g. 2GiB or 1500MB "
                                                        "(default: half the machine)")] = None,
    shard_size: Annotated[int, typer.Option(help="images per task")] = 64,
    tta: TtaOption = False,
) -> None:
    """Run a model over every new image under --input; results and a `predictions` table row for each."""
    with user_errors():
        from pixelmill.flows import preflight
        from pixelmill.tasks.core.tables import is_data_ref
        from pixelmill.tasks.inference.plan import ApplyConfig, parse_bytes

        fields = dict(batch_size=batch_size, tile=tile, overlap=overlap, format=format, quality=quality,
                      workers=workers, force=force, limit=limit, overlay=overlay, shard_size=shard_size, depth=depth,
                      checks=checks, metadata=metadata, tta=tta)
        if max_memory:
            fields["max_memory"] = parse_bytes(max_memory)
        apply_config = ApplyConfig(**fields).check()
        runner = runner_of(runner, dask)
        preflight.require_model(workspace, model)
        if is_data_ref(input):  # images:NAME (dataset:NAME, its old spelling, too)
            preflight.require_data(workspace, input, ("images",))
        else:
            preflight.require_source(input)
        start_prefect()
        from pixelmill.flows.apply import run_apply

        s = run_apply(model, input, output, apply_config, workspace=workspace, runner=runner)
        typer.echo(f"{s['model']} ({s['task']}): {s['processed']} processed, {s['skipped']} skipped, "
                   f"{s['failed']} failed, {s['flagged']} flagged, {s['images_per_s']} images/s")
        for e in s["errors"][:10]:
            typer.echo(f"  error {e['input_uri']}: {e['error']}")
        for note, count in s["notes"].items():  # once per run, not once per file
            typer.echo(f"  note ({count} outputs): {note}")
        if s["flagged"]:
            typer.echo(f"flagged outputs: `pixelmill review {s['run_id']}`")
        typer.echo(f"outputs: {s['output']}")
        typer.echo(f"rows: `pixelmill catalog show predictions --model {s['model'].split(':')[0]}`")
