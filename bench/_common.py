"""What every benchmark script shares: a scratch folder, a private Prefect home, JSON alone on stdout."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def run_benchmark(name: str, workdir: Path | None, run: Callable[[Path], dict]) -> dict:
    """Call run(workdir) and print its result as the only thing on stdout.

    Before Prefect is imported: a generous server start timeout, no analytics, a quiet console, and a private
    Prefect home (its own fresh database) unless the caller points us at a server.
    """
    own_workdir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=f"pixelmill-bench-{name}-")) if own_workdir else workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    isolated_home = "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ
    if isolated_home:
        os.environ["PREFECT_HOME"] = str(workdir / "prefect-home")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON
            result = run(workdir)
            result["prefect_home"] = "private, fresh database" if isolated_home else "caller's settings"
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return result


def parse_with_quick(parser, argv: list[str] | None):
    """Parse the arguments every benchmark shares the meaning of: --quick (n=200), --n and --repeats >= 1."""
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 200
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be >= 1")
    return args
