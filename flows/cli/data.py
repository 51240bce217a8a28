"""Data commands: `ingest`, `crappify`, `recipes`, `catalog show`, `catalog sql`.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Annotated

import typer

from pixelmill.flows.cli.common import (
    WORKERS_HELP,
    Dask,
    Runner,
    Workers,
    Workspace,
    _debug,
    app,
    catalog_app,
    next_command,
    note,
    runner_of,
    start_prefect,
    user_errors,
)
from pixelmill.tasks.core.errors import PixelmillError


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="folder, s3://bucket/prefix, memory://..., or a .zip/.tar archive")],
    dataset: Annotated[str | None, typer.Option(help="data set name (default: the source's base name)")] = None,
    masks: Annotated[str | None, typer.Option(help="mask folder URL with the same file names, or a name "
                                                   "pattern like '{stem}_P.png'")] = None,
    workspace: Workspace = None,
    shard_size: Annotated[int | None, typer.Option(help="files per task (default: about 4 tasks per worker, "
                                                        "16 to 1024 files each)")] = None,
    split_fractions: Annotated[str, typer.Option(help="the train,valid,test fractions each image's split is drawn "
                                                      "with (from its content: the same on every rerun)")]
    = "0.8,0.1,0.1",
    split: Annotated[str | None, typer.Option(hidden=True, help="the old name of --split-fractions")] = None,
    workers: Workers = 4,
    runner: Runner = None,
    force: Annotated[bool, typer.Option(help="re-read unchanged files too")] = False,
) -> None:
    """Catalog the images under SOURCE into the `images` table (bad files become error rows)."""
    with user_errors():
        from pixelmill.flows import preflight
        from pixelmill.tasks.core.names import check_name
        from pixelmill.tasks.prep.ingest import IngestConfig, dataset_name_for

        if split is not None:  # elsewhere --split names one split (train, valid, test), so ingest's was renamed
            note("--split is now --split-fractions for ingest (--split names one split in other commands)")
            split_fractions = split
        cfg = IngestConfig(masks=masks, shard_size=shard_size, workers=workers, force=force,
                           split_fractions=preflight.parse_split_fractions(split_fractions))
        check_name(dataset or dataset_name_for(source), "dataset name")
        runner = runner_of(runner, None)
        preflight.require_source(source)
        start_prefect()
        from pixelmill.flows.console import progress_bar
        from pixelmill.flows.ingest import ingest as ingest_flow
        from pixelmill.tasks.core.tables import TABLES

        with progress_bar():
            summary = ingest_flow(source, dataset=dataset, workspace=workspace, config=cfg, runner=runner)
        if _debug["verbose"]:
            typer.echo(TABLES["images"].markdown(summary, f"ingest {summary['dataset']}") + "\n")
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
    workers: Annotated[int | None, typer.Option(help=WORKERS_HELP + " (default: this machine's cores)")] = None,
    shard_size: Annotated[int | None, typer.Option(help="images per task (default: about 4 tasks per worker, "
                                                        "16 to 1024 images each)")] = None,
    runner: Runner = None,
    dask: Dask = None,
    workspace: Workspace = None,
) -> None:
    """Make a paired training set (HR target, degraded LR input) from a data set's ok images."""
    with user_errors():
        from pixelmill.flows import preflight
        from pixelmill.tasks.prep.crappify import CrappifyConfig

        cfg = CrappifyConfig(recipe=recipe, split=split, name=name, seed=seed, shard_size=shard_size,
                             **({"workers": workers} if workers is not None else {}))
        runner = runner_of(runner, dask)
        preflight.require_recipe(recipe)
        preflight.require_dataset(workspace, dataset)
        start_prefect()
        from pixelmill.flows.console import progress_bar
        from pixelmill.flows.crappify import run_crappify
        from pixelmill.tasks.core.tables import TABLES

        with progress_bar():
            summary = run_crappify(dataset, cfg, workspace=workspace, runner=runner)
        if _debug["verbose"]:
            typer.echo(TABLES["pairs"].markdown(summary, f"crappify {summary['set_name']}") + "\n")
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


@catalog_app.command("show")
def catalog_show(
    table: Annotated[str, typer.Argument(help="images, pairs, models, evaluations or predictions")] = "images",
    dataset: Annotated[str | None, typer.Option(help="images: only this data set")] = None,
    pairs: Annotated[str | None, typer.Option(help="pairs: only this paired set")] = None,
    model: Annotated[str | None, typer.Option(help="models, evaluations, predictions: only this model")] = None,
    workspace: Workspace = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """A readable summary of a catalog table (what it shows is declared in tasks/core/tables.py)."""
    with user_errors():
        from pixelmill.flows import preflight
        from pixelmill.tasks.core.catalog import Catalog
        from pixelmill.tasks.core.settings import workspace_url
        from pixelmill.tasks.core.tables import table as table_of

        decl = table_of(table)  # an unknown table says which ones exist
        catalog = Catalog(workspace_url(workspace))
        preflight.require_workspace(workspace)
        group = pick_group(decl, {"--dataset": dataset, "--pairs": pairs, "--model": model})
        if group is not None:
            preflight.require_table_group(workspace, table, group)
        data = catalog.read(table, group)
        if data.num_rows == 0:
            raise PixelmillError(f"table {table!r} is empty in {catalog.workspace}",
                                 f"{decl.make}, or pass the right --workspace")
        summary = decl.summary(data)
        text = decl.markdown(summary, f"{table} table" + (f": {decl.group} {group}" if group else ""))
        typer.echo(json.dumps(summary, indent=1, default=str) if as_json else text)
        typer.echo(f"\nParquet files: {catalog.table_url(table)}/*/*.parquet")


@catalog_app.command("sql")
def catalog_sql(
    query: Annotated[str, typer.Argument(help='one SQL statement (DuckDB) over the views images, pairs, models, '
                                              'evaluations and predictions, e.g. "select status, count(*) from '
                                              'images group by 1"')],
    workspace: Workspace = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON lines")] = False,
    limit: Annotated[int, typer.Option(help="rows printed as a table at most (--json prints all)")] = 50,
) -> None:
    """Query the catalog with SQL: each table is a view that sees each key once (the row `catalog show` counts)."""
    with user_errors():
        from pixelmill.flows import preflight
        from pixelmill.tasks.core import sql

        result = sql.query(preflight.require_workspace(workspace), query)
        if as_json:
            for row in result.to_pylist():
                typer.echo(json.dumps(row, default=str))
            return
        typer.echo(text_table(result, limit))


def text_table(result, limit: int) -> str:
    """An Arrow table as aligned columns, cells cut at 60 characters, at most `limit` rows."""
    width = 60
    rows = result.slice(0, limit).to_pylist()
    cells = [[("" if v is None else str(v)).replace("\n", " ") for v in row.values()] for row in rows]
    cells = [[c if len(c) <= width else c[:width - 1] + "…" for c in row] for row in cells]
    headers = result.column_names
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    more = result.num_rows - len(rows)
    lines.append(f"({result.num_rows} row{'s' * (result.num_rows != 1)}" +
                 (f", {more} not shown: --limit N or --json)" if more else ")"))
    return "\n".join(lines)


def pick_group(decl, given: dict[str, str | None]) -> str | None:
    """The group named by the table's own option; `--dataset` for another table is the old spelling."""
    from pixelmill.tasks.core.errors import ConfigError

    named = {option: value for option, value in given.items() if value is not None}
    if not named:
        return None
    if len(named) > 1:
        raise ConfigError(f"give one of {', '.join(named)}", f"the {decl.name} table's groups are picked with "
                                                            f"{decl.option}")
    (option, group), = named.items()
    if option == decl.option:
        return group
    if option == "--dataset":  # before typed names, --dataset picked the group of any table
        note(f"--dataset for the {decl.name} table is now {decl.option}")
        return group
    raise ConfigError(f"{option} does not apply to the {decl.name} table",
                      f"pick a {decl.group} with {decl.option} (`pixelmill catalog show {decl.name}` lists them)")
