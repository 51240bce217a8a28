"""How bulk work is cut into shards and how a shard commits: ingest, crappify and apply share this.

A shard is tens to hundreds of items (Prefect's per-task cost is milliseconds, one item's work is too).
Its id hashes everything that defines its output, so a rerun of the same shard rewrites the same catalog
part (`part-{shard_id}.parquet`) instead of adding one: retries and reruns never duplicate rows.
A shard writes its outputs first and its catalog part last, so a crash never leaves a row without its files.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.core.faults import fault_point

T = TypeVar("T")

# Measured (bench/README.md): a shard costs Prefect about 55 ms of CPU (its task run in this process and on
# the server), an image 4-7 ms (ingest's read, hash and decode; crappify's pair). 4 shards per worker keep the
# tail short (all workers end within about a shard of each other); 1024 items a shard keep Prefect under 1% of
# a large run; 16 a shard keep small runs from paying a task run per handful of images.
SHARDS_PER_WORKER, MIN_SHARD, MAX_SHARD = 4, 16, 1024


def auto_shard_size(items: int, workers: int) -> int:
    """Items per shard: about SHARDS_PER_WORKER shards per worker, within [MIN_SHARD, MAX_SHARD]."""
    return max(MIN_SHARD, min(MAX_SHARD, -(-items // (SHARDS_PER_WORKER * max(1, workers)))))


@dataclass
class ShardResult:
    """What a shard task returns: small, whatever the shard's size."""

    shard_id: str
    items: int
    counts: dict[str, int] = field(default_factory=dict)  # rows by status


def chunks(items: Sequence[T], size: int) -> Iterator[tuple[T, ...]]:
    """Consecutive chunks of `size` items (the last one shorter)."""
    for start in range(0, len(items), size):
        yield tuple(items[start: start + size])


def shard_id(*key: object) -> str:
    """A stable id from JSON-able inputs: the same inputs give the same id on every run and machine."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def commit_shard(catalog: Catalog, table: str, group: str, shard: str, rows: Iterable[dict]) -> ShardResult:
    """Write the shard's catalog part (atomically replacing an earlier attempt) and count its statuses."""
    rows = list(rows)
    fault_point("shard.commit")  # the shard's outputs are written, its rows not yet recorded
    catalog.write_part(table, group, shard, rows)
    return ShardResult(shard, len(rows), dict(Counter(r["status"] for r in rows)))


def error_row(exc: Exception, kind: str) -> str:
    """The one rule for an item's failure inside a shard: a transient storage error is the store's, so it is
    raised again (the shard fails and its retry may succeed); anything else is this item's, and becomes the
    `error` of its row, "<kind>: <what happened>". Call it from an `except` block."""
    if storage.is_transient(exc):
        raise exc
    if isinstance(exc, PixelmillError):  # already says what and where (storage wraps its own failures)
        return f"{kind}: {exc}"
    return f"{kind}: {type(exc).__name__}: {exc}"
