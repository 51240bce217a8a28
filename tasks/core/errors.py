"""The one error type users see: a message plus a hint that says what to do.

Everything that is the user's to fix (a missing bucket, a bad config, an unknown table) raises
`PixelmillError`; the CLI prints it as two readable lines instead of a traceback.
Bad *images* are not errors of this kind: they become catalog rows (see tasks/core/images.py).
"""

from __future__ import annotations


class PixelmillError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message

    # Prefect and Dask pickle exceptions across threads/processes; keep both fields.
    def __reduce__(self):
        return (type(self), (self.message, self.hint))


class StorageError(PixelmillError):
    """A URL that cannot be listed, read or written (missing bucket, path, permission)."""


class ConfigError(PixelmillError):
    """A configuration value or file that cannot be used."""
