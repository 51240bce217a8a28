"""The `pixelmill` command line. Each command builds a typed config and calls a flow.

One module per command group (common.py holds what they share); importing them registers their commands on
`app`, in the order `--help` lists them. Set PREFECT_API_URL to run against a Prefect server; otherwise the
first local one found, else Prefect's embedded one.
"""

from __future__ import annotations

import os
import sys

from pixelmill.flows.cli import data, inference, models, service, trace  # noqa: F401  (registers the commands)
from pixelmill.flows.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    # The embedded server takes 10-15 s to start on a small machine; Prefect's default limit is 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sys.exit(app())


if __name__ == "__main__":
    main()
