"""What the CLI does around a flow run: pick the Prefect server, keep Prefect's console quiet, show progress.

Server: Prefect starts an embedded server for every command when PREFECT_API_URL is unset (about 10 s on two
cores). A local server that is already running (`make ui`, `pixelmill server`) answers its health check in
milliseconds, so it is probed first and used when it answers.

Quiet console: Prefect logs every run's INFO lines, a docs banner, and a failed run's traceback twice (once
from the task run, once from the flow run) before the CLI prints its own `error:` and `hint:`. Unless
--verbose, the console shows warnings and errors of our code only; the run's full logs, tracebacks included,
still go to the Prefect API (the handlers on `prefect.flow_runs` and `prefect.task_runs` are untouched).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path

LOCAL_SERVER_ENV = "PIXELMILL_LOCAL_PREFECT_URL"
DEFAULT_LOCAL_SERVER = "http://127.0.0.1:4200/api"
# A server on this machine answers in milliseconds; waiting longer only taxes every command when none runs.
PROBE_SECONDS = 0.3


def local_server_url() -> str:
    return (os.environ.get(LOCAL_SERVER_ENV) or DEFAULT_LOCAL_SERVER).rstrip("/")


def server_is_up(api_url: str, timeout: float = PROBE_SECONDS) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as answer:
            return answer.status == 200
    except (OSError, ValueError):
        return False


def profile_api_url() -> str | None:
    """PREFECT_API_URL from the active Prefect profile (`prefect config set`), read without importing Prefect."""
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    name = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    return data.get("profiles", {}).get(name, {}).get("PREFECT_API_URL")


def choose_server() -> str:
    """Point Prefect at a server (before Prefect is imported: it reads the environment once); returns the
    line that says which server the run uses."""
    if os.environ.get("PREFECT_API_URL"):
        return f"prefect: server {os.environ['PREFECT_API_URL']} (PREFECT_API_URL)"
    if "prefect.context" in sys.modules:  # called from Python that set Prefect up already: it has its server
        return "prefect: the server this process is set up for"
    configured = profile_api_url()
    if configured:
        return f"prefect: server {configured} (the active Prefect profile)"
    url = local_server_url()
    if server_is_up(url):
        os.environ["PREFECT_API_URL"] = url
        return f"prefect: local server {url} (UI {url.removesuffix('/api')})"
    return (f"prefect: no server at {url}; starting an embedded one for this command (about 10 s; "
            "`pixelmill server` keeps one running)")


class QuietConsole(logging.Filter):
    """Warnings and errors of our code pass; Prefect's INFO lines and the engine's reports of a failed run
    (the CLI prints that error itself, and the run's logs keep the traceback) do not."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        from_engine = (record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
                       and f"{os.sep}prefect{os.sep}" in record.pathname)
        return not from_engine


def quiet_prefect_console() -> None:
    """Add QuietConsole to Prefect's console handlers (importing Prefect is what installs them)."""
    import prefect.main  # noqa: F401
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(isinstance(f, QuietConsole)
                                                                      for f in handler.filters):
                handler.addFilter(QuietConsole())


# Flows report progress here as well as to their progress artifact; the CLI plugs a terminal bar in.
ProgressSink = Callable[[str, int, int], None]
_sink: dict[str, ProgressSink | None] = {"fn": None}


def report_progress(what: str, done: int, total: int) -> None:
    if _sink["fn"] is not None:
        _sink["fn"](what, done, total)


def set_progress_sink(fn: ProgressSink | None) -> None:
    _sink["fn"] = fn


@contextlib.contextmanager
def progress_bar(console=None):
    """A rich progress bar on stderr while a flow runs, one line per kind of work that the flow reports; nothing
    when stderr is not a terminal (logs and pipes get the summary only)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        bars: dict[str, int] = {}

        def show(what: str, done: int, total: int) -> None:
            if what not in bars:
                bars[what] = progress.add_task(what, total=total)
            progress.update(bars[what], completed=done, total=total)

        set_progress_sink(show)
        try:
            yield
        finally:
            set_progress_sink(None)


def start_server(host: str, port: int, log_path: Path, timeout: float = 180.0) -> tuple[int | None, str]:
    """`prefect server start` in the background, in its own session so that it outlives this command; returns
    (its pid, or None when a server already answers there; the API URL) once it answers its health check."""
    url = f"http://{host}:{port}/api"
    if server_is_up(url):
        return None, url
    from pixelmill.tasks.core.errors import PixelmillError

    prefect = Path(sys.executable).parent / "prefect"  # the venv's, even when the venv is not activated
    command = [str(prefect) if prefect.exists() else "prefect", "server", "start", "--host", host, "--port", str(port)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server_is_up(url, timeout=1.0):
            return proc.pid, url
        if proc.poll() is not None:
            raise PixelmillError(f"`prefect server start` exited with code {proc.returncode}", f"see {log_path}")
        time.sleep(0.5)
    raise PixelmillError(f"the Prefect server did not answer at {url} within {timeout:.0f} s",
                         f"see {log_path}; stop it with `kill {proc.pid}`")
