"""The one error type users see: a message plus a hint that says what to do.

Everything that is the user's to fix (a missing bucket, a bad config, an unknown table) raises
`PixelmillError`; the CLI prints it as two readable lines instead of a traceback.
Bad *images* are not errors of this kind: they become catalog rows (see tasks/core/images.py).
"""

from __future__ import annotations

from pixelmill.models.errors import PixelmillError

__all__ = ["ConfigError", "PixelmillError", "StorageError"]


class StorageError(PixelmillError):
    """A URL that cannot be listed, read or written (missing bucket, path, permission)."""


class ConfigError(PixelmillError):
    """A configuration value or file that cannot be used."""
