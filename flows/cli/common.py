"""What every command shares: the Typer apps, the one-line error handling, the Prefect start, config files.

Errors the user can fix print as one line plus a hint (exit code 1); `pixelmill --debug ...` shows the traceback.
"""

from __future__ import annotations

import contextlib
import os
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


# One meaning across ingest, crappify and apply: shards in flight at once, each on one worker.
WORKERS_HELP = ("shards in flight at once, each on one worker: a thread, a process of this machine's pool, or a Dask "
                "worker")
Workers = Annotated[int, typer.Option(help=WORKERS_HELP)]


Runner = Annotated[str | None, typer.Option(
    envvar="PIXELMILL_RUNNER", show_default="threads",
    help="where the shards run: threads, processes, dask (a LocalCluster of --workers processes), dask:PROFILE "
         "(deploy/dask.yaml) or a Dask scheduler address like tcp://scheduler:8786")]
Dask = Annotated[str | None, typer.Option(hidden=True, help="the older spelling of --runner: 'local' or an address")]


def runner_of(runner: str | None, dask: str | None) -> str | None:
    """--runner, else the older --dask (`local` meant a LocalCluster), checked before anything starts."""
    from pixelmill.flows.runners import runner_name

    chosen = runner or dask
    return runner_name(chosen) if chosen else None


TtaOption = Annotated[bool, typer.Option(help="geometric self-ensemble: the mean over 8 flips and quarter turns "
                                                "of the input (8x the compute)")]


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


def note(text: str) -> None:
    """One line on stderr about a spelling that still works but has a new name."""
    typer.echo(f"note: {text}", err=True)


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
