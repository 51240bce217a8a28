"""Inference commands: `enhance` and `segment` (one file), `apply` (a folder, bucket, archive or data set).
"""

from __future__ import annotations

from typing import Annotated

import typer

from pixelmill.flows.cli.common import Workspace, app, start_prefect, user_errors
from pixelmill.tasks.core.errors import ConfigError, PixelmillError


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
        from pixelmill.models.device import pick_device
        from pixelmill.tasks.inference.enhance import alpha_of, encode_like, enhance_image, with_alpha

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
        from pixelmill.models.device import pick_device
        from pixelmill.tasks.inference.segment import mask_png, overlay_png, segment_image

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
