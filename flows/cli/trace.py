"""Trace commands: `lineage` (where a file came from, what a model made) and `review` (a run's flagged outputs).

Both only read the catalog and the registry: no Prefect server is started or looked for, and torch is not imported.
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from pixelmill.flows.cli.common import Workspace, app, user_errors
from pixelmill.tasks.core.errors import PixelmillError

AsJson = Annotated[bool, typer.Option("--json", help="print it as JSON (the keys: tasks/core/lineage.py)")]


@app.command()
def lineage(
    target: Annotated[str, typer.Argument(help="an output file (path or URL), a copy of one, an ingested image, a "
                                               "paired set's file, or a model: NAME, NAME:vN, NAME@ALIAS")],
    as_json: AsJson = False,
    workspace: Workspace = None,
) -> None:
    """Walk a file back to the model version, its training data and recipe and the source images; or a model
    forward to the runs and outputs it made."""
    with user_errors():
        from pixelmill.tasks.core import lineage as lin
        from pixelmill.tasks.core.layout import Layout
        from pixelmill.tasks.core.settings import workspace_url

        ws = workspace_url(workspace)
        model_error = not_a_model(ws, target)
        if model_error is None:
            found = lin.lineage_of_model(ws, target)
        else:
            try:
                found = lin.lineage_of_file(ws, target)
            except PixelmillError:
                if looks_like_a_path(target):
                    raise
                # a bare word that is no file: more likely a mistyped model, so say what the registry holds
                raise PixelmillError(f"{target!r} is neither a file nor a model of workspace {Layout.of(ws).root}",
                                     f"{model_error.message}; {model_error.hint}") from None
        typer.echo(json.dumps(found, indent=1, default=str) if as_json else lin.render(found))


def not_a_model(workspace: str, target: str) -> PixelmillError | None:
    """None when `target` names a model and no file of that name is here (a file wins: `lineage sr` in a folder
    holding a file `sr` means the file); else why it is not a model."""
    from pixelmill.tasks.core import registry, storage

    if os.path.isfile(target) or ("://" in target and storage.exists(target)):
        return PixelmillError(f"{target} is a file", "")
    try:
        registry.resolve(workspace, target)
    except PixelmillError as exc:
        return exc
    return None


def looks_like_a_path(target: str) -> bool:
    return "/" in target or os.sep in target or bool(os.path.splitext(target)[1])


@app.command()
def review(
    run_id: Annotated[str, typer.Argument(help="the Prefect flow run id of an apply (its summary prints it)")],
    as_json: AsJson = False,
    workspace: Workspace = None,
) -> None:
    """The outputs of a run that a check flagged for a person: input, output, reason, colour drift, NIQE, clipping."""
    with user_errors():
        from pixelmill.tasks.core import lineage as lin
        from pixelmill.tasks.core.settings import workspace_url

        found = lin.review_run(workspace_url(workspace), run_id)
        typer.echo(json.dumps(found, indent=1, default=str) if as_json else lin.render_review(found))
