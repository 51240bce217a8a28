"""Deterministic fault points: a process kills itself with SIGKILL at a named point, for the crash tests.

    PIXELMILL_FAULT=shard.commit:2          killed when the 2nd shard of this process is about to be recorded
    PIXELMILL_FAULT=storage.write:5         killed right after the 5th file this process wrote landed whole
    PIXELMILL_FAULT=train.checkpoint:1      killed right after the first training checkpoint is stored

A kill test then asserts on a state it knows (N outputs on storage, their shard not yet in the catalog)
instead of polling a running process and hoping to land in the window, which a loaded machine can miss.
Unset (always, outside tests) a point costs one dict lookup. Counts are per process: in a process pool each
child counts its own hits. Two optional settings narrow and widen the kill:

    PIXELMILL_FAULT_WHERE=/datasets/d-lesson7/   only hits whose detail (storage.write: the URI written)
                                                 contains this count, so catalog parts and leases do not
    PIXELMILL_FAULT_GROUP=1                      SIGKILL the whole process group, not only this process: a
                                                 pool child's hit takes its parent and siblings with it, as a
                                                 lost machine would (only for a command started in a
                                                 session of its own, as the fault suite starts them)
    PIXELMILL_FAULT_HOLD=/tmp/gate               do not kill: at the armed hit, create `/tmp/gate.PID` and wait
                                                 until `/tmp/gate` exists, so that a test can line up two runs
                                                 at a known point before letting them go on together
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

ENV = "PIXELMILL_FAULT"
WHERE_ENV = "PIXELMILL_FAULT_WHERE"
GROUP_ENV = "PIXELMILL_FAULT_GROUP"
HOLD_ENV = "PIXELMILL_FAULT_HOLD"
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


def fault_point(name: str, detail: str = "") -> None:
    """Kill this process (SIGKILL: no cleanup, no atexit, like a lost machine) at the armed hit of `name`;
    with PIXELMILL_FAULT_WHERE set, only hits whose `detail` contains it count."""
    target = armed()
    if target is None or target[0] != name or os.environ.get(WHERE_ENV, "") not in detail:
        return
    with _lock:
        _hits[name] += 1
        hit = _hits[name]
    if hit == target[1]:
        if os.environ.get(HOLD_ENV):
            hold(os.environ[HOLD_ENV])
            return
        if os.environ.get(GROUP_ENV):
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def hold(gate: str) -> None:
    """Say that this process is here (the file `{gate}.{pid}`), then wait in this thread until `gate` exists."""
    with open(f"{gate}.{os.getpid()}", "w"):
        pass
    while not os.path.exists(gate):
        time.sleep(0.05)
