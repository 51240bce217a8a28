"""Process-wide defaults that come from the environment."""

from __future__ import annotations

import math
import os

from pixelmill.tasks.core.errors import ConfigError

DEFAULT_WORKSPACE = "./pixelmill-workspace"
# Long enough to ride out a storage server's restart, short enough that a dead endpoint is reported soon.
DEFAULT_STORAGE_RETRY_SECONDS = 120.0


def workspace_url(workspace: str | None = None) -> str:
    """The workspace URL: the argument, else $PIXELMILL_WORKSPACE, else ./pixelmill-workspace."""
    return workspace or os.environ.get("PIXELMILL_WORKSPACE") or DEFAULT_WORKSPACE


def storage_retry_seconds() -> float:
    """How long storage calls keep retrying transient errors: $PIXELMILL_STORAGE_RETRY_SECONDS, else 120."""
    raw = os.environ.get("PIXELMILL_STORAGE_RETRY_SECONDS", "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_STORAGE_RETRY_SECONDS
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(f"PIXELMILL_STORAGE_RETRY_SECONDS={raw!r} is not a number of seconds",
                          "set it to e.g. 120, or 0 to never retry")
    return seconds
