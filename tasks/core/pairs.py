"""A pair's HR target, wherever it is stored: a file crappify wrote (a copy) or the source image itself.

Crappify writes the HR target only when a reference cannot say what it is. When the recipe leaves the source's
pixels as they are (lesson7: the target is the source) or only crops them (modcrop: sr-x2, sr-x4, realistic), the
pairs row refers to the source instead of copying it (tasks/prep/crappify.py decides):

    hr_kind     copy (null in rows written before references) | source
    hr_uri      the PNG crappify wrote | the source image (the row's image_uri)
    hr_sha256   sha256 of the bytes at hr_uri: the source's as ingest read them (the pair's image_sha256; crappify
                checks the size it reads against ingest's), or the copy's as crappify wrote them
    hr_crop     source only: [left, top, right, bottom] taken after decoding, or null for the whole image
    hr_bytes, hr_version    source only: its size and version (ETag, CRC or mtime) as ingest listed it

`load_hr` gives the pixels a copy would have held: the source decoded by crappify's own rules (`decode_image`:
EXIF orientation applied, any mode to 8-bit RGB), then cropped. It refuses bytes whose sha256 is not the recorded
one, so a source that changed after crappify is never used silently. That check costs a hash of bytes already
read (a tenth of a PNG decode); `check_sources` finds changed and vanished sources before a run starts, with one
stat per source and a read only where the stat differs from what ingest saw.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.errors import PixelmillError, StorageError
from pixelmill.tasks.core.images import decode_image

log = logging.getLogger("pixelmill.pairs")

COPY, SOURCE = "copy", "source"
CHECK_THREADS = 16  # stats in flight: S3 answers one in tens of ms, a local disk in microseconds
# The source was accepted by crappify under its own pixel limit and is the same bytes (sha256): no second limit.
_NO_LIMIT = 2**62


class SourceChanged(PixelmillError):
    """A referenced source is gone or no longer holds the bytes the pair was made from."""


@dataclass(frozen=True)
class HrRef:
    """Where a pair's HR target is and how to read it (the pairs row's hr_* columns)."""

    uri: str
    kind: str = COPY
    sha256: str | None = None
    crop: tuple[int, int, int, int] | None = None
    size: int | None = None  # source: bytes at ingest
    version: str | None = None  # source: ETag/CRC/mtime at ingest

    @classmethod
    def of(cls, row: dict) -> HrRef:
        """From a pairs row; a row without the hr_kind column (or null there) is a copy, as all were before."""
        kind = row.get("hr_kind") or COPY
        crop = row.get("hr_crop")
        return cls(row["hr_uri"], kind, row.get("hr_sha256"), tuple(crop) if crop else None,
                   row.get("hr_bytes"), row.get("hr_version"))

    @property
    def is_source(self) -> bool:
        return self.kind == SOURCE


def check_bytes(ref: HrRef, data: bytes) -> None:
    """Refuse a referenced source whose bytes are not the ones the pair was made from."""
    if ref.is_source and hashlib.sha256(data).hexdigest() != ref.sha256:
        raise SourceChanged(f"{ref.uri} changed since the pair was made (sha256 is not {ref.sha256[:16]}...)",
                            "ingest the source again and crappify into a new --name, or restore the file")


def decode_hr(ref: HrRef, data: bytes) -> Image.Image:
    """The HR target as 8-bit RGB from the bytes at ref.uri (checked first when they are a source's)."""
    if not ref.is_source:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    check_bytes(ref, data)
    im = decode_image(data, "RGB", max_pixels=_NO_LIMIT)  # crappify's rules: the pixels it cropped and degraded
    return im.crop(ref.crop) if ref.crop else im


def load_hr(ref: HrRef, read: Callable[[str], bytes] = storage.read_bytes) -> Image.Image:
    """Read and decode a pair's HR target; `read` fetches bytes (training passes its cache of remote files)."""
    try:
        data = read(ref.uri)
    except StorageError as exc:
        if ref.is_source and "does not exist" in str(exc):
            raise SourceChanged(f"{ref.uri} is gone: the pair refers to it as its HR target",
                                "restore the file, or ingest and crappify again") from exc
        raise
    return decode_hr(ref, data)


def source_problem(ref: HrRef) -> str | None:
    """Why a referenced source cannot be used now ("vanished", "changed"), or None when it is as crappify read it.

    One stat; the bytes are read and hashed only when its size or version is not the one ingest saw.
    """
    seen = storage.stat(ref.uri)
    if seen is None:
        return "vanished"
    if ref.size is not None and ref.version and seen == (ref.size, ref.version):
        return None
    try:
        data = storage.read_bytes(ref.uri)
    except StorageError as exc:
        if "does not exist" in str(exc):
            return "vanished"
        raise
    return None if hashlib.sha256(data).hexdigest() == ref.sha256 else "changed"


def check_sources(refs: Iterable[tuple[str, HrRef]]) -> dict[str, str]:
    """pair id -> "vanished" | "changed" for the pairs whose referenced source cannot be used; copies are not checked.

    Each source is looked at once, however many pairs (sets, recipes) refer to it.
    """
    refs = [(pid, ref) for pid, ref in refs if ref.is_source]
    unique = list({(ref.uri, ref.sha256): ref for _, ref in refs}.values())
    if not unique:
        return {}
    with ThreadPoolExecutor(min(CHECK_THREADS, len(unique))) as pool:
        problems = dict(zip(((r.uri, r.sha256) for r in unique), pool.map(source_problem, unique), strict=True))
    return {pid: problems[ref.uri, ref.sha256] for pid, ref in refs if problems[ref.uri, ref.sha256]}


def report_stale(set_name: str, split: str, stale: dict[str, tuple[str, str]], shown: int = 10) -> str:
    """One message naming the pairs dropped for a changed or vanished source: pair id -> (uri, reason)."""
    items = sorted(stale.items(), key=lambda kv: kv[1][0])
    listed = "; ".join(f"{pid} ({why}: {uri})" for pid, (uri, why) in items[:shown])
    more = f"; and {len(items) - shown} more" if len(items) > shown else ""
    return (f"paired set {set_name!r}, split {split}: {len(items)} pair(s) left out, their source image changed or "
            f"vanished since crappify: {listed}{more}. Re-ingest and crappify again (a new --name) to use them")
