"""Service commands: `server` (a Prefect server in the background) and `demo`.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from pixelmill.flows.cli.common import app, user_errors


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
