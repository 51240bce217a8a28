"""The base of every error a user can fix: a message plus a hint that says what to do.

It lives at the bottom of the import graph (models <- tasks <- flows) so that torch-side code (a device that is
not there, a checkpoint that does not fit) can raise it too; tasks/core/errors.py adds the storage and config
kinds. Torch-free.
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


class DeviceError(PixelmillError):
    """A device asked for that this machine does not have."""
