"""Deterministic fault points: a process kills itself with SIGKILL at a named point, for the crash tests.

    PIXELMILL_FAULT=shard.commit:2          killed when the 2nd shard of this process is about to be recorded
    PIXELMILL_FAULT=storage.write:5         killed right after the 5th file this process wrote landed whole
    PIXELMILL_FAULT=train.checkpoint:1      killed right after the first training checkpoint is stored

A kill test then asserts on a state it knows (N outputs on storage, their shard not yet in the catalog)
instead of polling a running process and hoping to land in the window, which a loaded machine can miss.
Unset (always, outside tests) a point costs one dict lookup. Counts are per process: in a process pool each
child counts its own hits.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENV = "PIXELMILL_FAULT"
POINTS = ("shard.commit", "storage.write", "train.checkpoint")
_hits: Counter[str] = Counter()
_lock = threading.Lock()


def armed() -> tuple[str, int] | None:
    """(point, nth hit) from PIXELMILL_FAULT, or None; an unknown point is refused so a typo cannot pass."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: unknown fault point; known: {', '.join(POINTS)}")
    return name, int(nth or 1)


def fault_point(name: str) -> None:
    """Kill this process (SIGKILL: no cleanup, no atexit, like a lost machine) at the armed hit of `name`."""
    target = armed()
    if target is None or target[0] != name:
        return
    with _lock:
        _hits[name] += 1
        hit = _hits[name]
    if hit == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
