"""Process-wide defaults that come from the environment."""

from __future__ import annotations

import os

DEFAULT_WORKSPACE = "./pixelmill-workspace"


def workspace_url(workspace: str | None = None) -> str:
    """The workspace URL: the argument, else $PIXELMILL_WORKSPACE, else ./pixelmill-workspace."""
    return workspace or os.environ.get("PIXELMILL_WORKSPACE") or DEFAULT_WORKSPACE
