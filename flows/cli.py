"""The `pixelmill` command line. Each command builds a typed config and calls a flow.

Errors the user can fix print as one line plus a hint (exit code 1); `pixelmill --debug ...` shows the traceback.
Set PREFECT_API_URL to run against a Prefect server; otherwise Prefect starts its embedded one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Annotated

import typer
from pydantic import ValidationError

from tasks.errors import ConfigError, PixelmillError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="pixelmill: restore and segment image archives in bulk, as Prefect flows.")
catalog_app = typer.Typer(no_args_is_help=True, help="Look at the Parquet catalog.")
app.add_typer(catalog_app, name="catalog")

_debug = {"on": False}
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
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        if exc.hint:
            typer.echo(f"hint: {exc.hint}", err=True)
        raise typer.Exit(1) from None


@app.callback()
def options(debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks")] = False) -> None:
    _debug["on"] = debug


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
        from flows.ingest import ingest as ingest_flow
        from tasks.ingest import IngestConfig
        from tasks.reports import images_markdown

        try:
            fractions = tuple(float(x) for x in split.split(","))
        except ValueError:
            raise ConfigError(f"--split {split!r} is not three numbers", "e.g. --split 0.8,0.1,0.1") from None
        cfg = IngestConfig(masks=masks, shard_size=shard_size, split_fractions=fractions, force=force)
        summary = ingest_flow(source, dataset=dataset, workspace=workspace, config=cfg)
        typer.echo(images_markdown(summary, f"ingest {summary['dataset']}"))
        typer.echo(f"\n{summary['new_or_changed']} new or changed, {summary['unchanged']} unchanged, "
                   f"{summary['other_files']} non-image files skipped.")


@app.command()
def crappify(
    dataset: Annotated[str, typer.Option(help="the ingested data set to degrade")],
    recipe: Annotated[str, typer.Option(help="a recipe name (see `pixelmill recipes`) or a YAML file")] = "lesson7",
    split: Annotated[str, typer.Option(help="train, valid, test or all")] = "all",
    name: Annotated[str | None, typer.Option(help="paired set name (default: DATASET-RECIPE)")] = None,
    seed: Annotated[int, typer.Option(help="global seed")] = 0,
    workers: Annotated[int, typer.Option(help="shards at once (threads, or Dask worker processes)")] = 2,
    shard_size: Annotated[int, typer.Option(help="images per task")] = 64,
    dask: Annotated[str | None, typer.Option(help="'local' for a Dask LocalCluster, or a scheduler address")]
    = None,
    workspace: Workspace = None,
) -> None:
    """Make a paired training set (HR target, degraded LR input) from a data set's ok images."""
    with user_errors():
        from flows.crappify import run_crappify
        from tasks.crappify import CrappifyConfig
        from tasks.reports import pairs_markdown

        cfg = CrappifyConfig(recipe=recipe, split=split, name=name, seed=seed, workers=workers,
                             shard_size=shard_size)
        summary = run_crappify(dataset, cfg, workspace=workspace, dask=dask)
        typer.echo(pairs_markdown(summary, f"crappify {summary['set_name']}"))
        typer.echo(f"\n{summary['made']} pairs made now, {summary['existing']} already there.")
        typer.echo(f"files: {summary['workspace']}/datasets/{summary['set_name']}/{{split}}/{{hr,lr}}/")


@app.command()
def recipes() -> None:
    """List the shipped degradation recipes and their steps."""
    with user_errors():
        from tasks.recipes import list_recipes

        for recipe in list_recipes():
            typer.secho(f"{recipe.name}  (hash {recipe.recipe_hash}, LR as {recipe.lr_format})", bold=True)
            typer.echo(f"  {recipe.description}")
            for label, ops in (("target", recipe.target), ("steps", recipe.steps)):
                for op in ops:
                    typer.echo(f"  {label}: {json.dumps(op.model_dump(mode='json'))}")
        typer.echo("\nYour own: a YAML file with the same fields, e.g. steps: [{op: blur, sigma: [0.5, 2]}, "
                   "{op: jpeg, quality: [30, 70]}]")


@catalog_app.command("show")
def catalog_show(
    table: Annotated[str, typer.Argument(help="table name")] = "images",
    dataset: Annotated[str | None, typer.Option(help="only this data set (group)")] = None,
    workspace: Workspace = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """A readable summary of a catalog table."""
    with user_errors():
        from tasks.catalog import Catalog
        from tasks.reports import images_markdown, images_summary
        from tasks.settings import workspace_url

        catalog = Catalog(workspace_url(workspace))
        data = catalog.read(table, dataset)
        if data.num_rows == 0:
            raise PixelmillError(f"table {table!r} is empty in {catalog.workspace}",
                                 "run `pixelmill ingest SOURCE` first, or pass the right --workspace")
        summary = images_summary(data)
        typer.echo(json.dumps(summary, indent=1) if as_json else images_markdown(summary, f"{table} table"))
        typer.echo(f"\nParquet files: {catalog.table_url(table)}/*/*.parquet")


@app.command()
def demo(
    directory: Annotated[str, typer.Option("--dir", help="local folder for the demo's bucket and workspace")]
    = "./pixelmill-demo",
) -> None:
    """Run the whole pipeline on built-in sample photographs, with a local folder as the bucket."""
    with user_errors():
        from flows.demo import demo as demo_flow
        from flows.demo import print_report

        report = demo_flow(directory)
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
