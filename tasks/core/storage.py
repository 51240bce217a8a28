"""Storage: one small API over any fsspec URL.

Accepted URLs: a local path, `file://`, `memory://`, `s3://bucket/prefix`, and zip/tar archives either as
fsspec chains (`zip://::s3://bucket/photos.zip`) or simply as a URL ending in .zip/.tar/.tgz/.tar.gz
(`s3://bucket/photos.zip`, `./photos.tar`). Every file we hand out is a full URL (`FileInfo.uri`) that
`read_bytes` accepts on any worker, so tasks pass strings, never open handles.

S3 endpoint and credentials come from the standard AWS environment/config (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3 for non-AWS servers).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import fsspec
from fsspec.archive import AbstractArchiveFileSystem
from fsspec.implementations.local import LocalFileSystem

from pixelmill.tasks.core.errors import StorageError

T = TypeVar("T")

ARCHIVE_SUFFIXES = {".zip": "zip", ".tar": "tar", ".tgz": "tar", ".tar.gz": "tar", ".tar.bz2": "tar",
                    ".tar.xz": "tar"}
# Keys in fsspec `info()` dicts that change when an object's content changes, best first.
_VERSION_KEYS = ("ETag", "etag", "CRC", "chksum", "mtime", "LastModified", "created")
_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ETIMEDOUT, errno.EPIPE, errno.ECONNABORTED, errno.EAGAIN}
_TRANSIENT_WORDS = ("SlowDown", "Throttl", "RequestTimeout", "InternalError", "ServiceUnavailable",
                    "503", "500 ", "502", "504", "Connection reset", "Read timeout")


@dataclass(frozen=True)
class FileInfo:
    uri: str
    size: int
    version: str  # ETag, CRC or mtime: what tells us the file changed without reading it
    rel: str  # path relative to the listed root, for mirroring names (masks, outputs)


def archive_protocol(url: str) -> str | None:
    """'zip' or 'tar' when the URL names an archive we should open as a folder, else None."""
    if "::" in url or url.startswith(("zip://", "tar://")):
        return None
    lowered = url.lower()
    for suffix, proto in ARCHIVE_SUFFIXES.items():
        if lowered.endswith(suffix):
            return proto
    return None


def _s3_options() -> dict:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def normalize_url(url: str, archives: bool = True) -> str:
    """Make a user's URL canonical: absolute `file://` for local paths, archive chains spelled out.

    With archives=False a URL ending in .zip means the archive file itself (to read or write its bytes).
    """
    url = str(url)
    proto = archive_protocol(url) if archives else None
    if "://" not in url and "::" not in url:
        url = "file://" + os.path.abspath(os.path.expanduser(url))
    elif not url.endswith("://"):
        url = url.rstrip("/")
    if url.startswith("memory://") and not url.startswith("memory:///"):
        url = "memory:///" + url[len("memory://"):]  # fsspec's own spelling, so URIs compare equal
    return f"{proto}://::{url}" if proto else url


def resolve(url: str, archives: bool = True) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL; fsspec caches the filesystem instances."""
    url = normalize_url(url, archives)
    options = {"s3": _s3_options()} if "s3://" in url else {}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except FileNotFoundError as exc:  # an archive whose file is missing
        raise StorageError(f"{url} does not exist", "check the path, bucket and archive name") from exc
    except (ValueError, ImportError) as exc:
        raise StorageError(f"cannot open {url}: {exc}", "use a local path, s3://, memory://, zip or tar") from exc


def to_uri(fs: fsspec.AbstractFileSystem, path: str, chain_of: str | None = None) -> str:
    """A full URL for `path` on `fs`; archive members keep their chain so any worker can reopen them."""
    if chain_of:
        # The member's exact name: `/abs/a.png` and `abs/a.png` are two members and need two URIs.
        proto, _, outer = chain_of.partition("::")
        return f"{proto.split('://')[0]}://{path}::{outer}"
    return fs.unstrip_protocol(path)


def join(url: str, *parts: str) -> str:
    url = normalize_url(url)
    if "::" in url:
        head, _, outer = url.partition("::")
        return f"{posixpath.join(head, *parts)}::{outer}"
    return posixpath.join(url, *parts)


def sibling(uri: str, name: str) -> str:
    """The URL of `name` in the same folder as `uri` (archive members stay inside their archive)."""
    head, sep, outer = uri.partition("::")
    proto, _, path = head.rpartition("://")
    return f"{proto}://{posixpath.join(posixpath.dirname(path), name)}{sep}{outer}"


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: dropped connections, timeouts, throttling and 5xx answers."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    text = f"{type(exc).__name__} {exc}"
    return any(word in text for word in _TRANSIENT_WORDS)


def retry(fn: Callable[[], T], *, what: str, attempts: int = 5, base_delay: float = 0.2) -> T:
    """Call fn, retrying transient errors with exponential backoff; a missing object fails at once."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except FileNotFoundError as exc:
            raise StorageError(f"{what} does not exist", "check the URL, bucket name and prefix") from exc
        except PermissionError as exc:
            raise StorageError(f"no permission for {what}", "check the credentials (AWS_* variables)") from exc
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            time.sleep(base_delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _version(info: dict) -> str:
    for key in _VERSION_KEYS:
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def _is_hidden(name: str) -> bool:
    # `.` and `..` are not hidden files but path tricks (object keys like `a/../b.png`): they must be
    # listed, so that ingest can give them an `unsafe_name` row instead of losing them.
    return (name.startswith(".") and name not in (".", "..")) or name == "__MACOSX"


def _archive_members(fs: AbstractArchiveFileSystem, root: str) -> list[tuple[str, dict]]:
    """(member name, info) of every file in an archive under root, each exactly once, by exact name.

    Not a walk over `fs.ls`: fsspec builds an archive's folders from member names, so a member named
    `/abs/a.png` sits in no folder that `ls` can reach. Its member table (`dir_cache`, filled by `ls`)
    has every name as stored: the archive's index is in memory anyway.
    """
    fs.ls(root, detail=False)
    prefix = f"{root}/" if root else ""
    return [(name, info) for name, info in fs.dir_cache.items()
            if info["type"] == "file" and name.startswith(prefix)
            and not any(_is_hidden(part) for part in name[len(prefix):].split("/"))]


def iter_files(url: str) -> Iterator[FileInfo]:
    """Every file under url, recursively, in a stable order: depth-first, entries sorted by name.

    Lists one directory at a time so a bucket with millions of keys is never held in memory at once.
    Hidden files (.DS_Store, our own .tmp- files) and __MACOSX folders are skipped.
    """
    url = normalize_url(url)
    fs, root = resolve(url)
    chain = url if "::" in url else None
    if not retry(lambda: fs.exists(root), what=url):
        raise StorageError(f"{url} does not exist", "check the path or bucket name (and AWS_ENDPOINT_URL for S3)")
    if retry(lambda: fs.isfile(root), what=url):
        info = retry(lambda: fs.info(root), what=url)
        yield FileInfo(to_uri(fs, root, chain), int(info.get("size") or 0), _version(info),
                       posixpath.basename(root))
        return
    root = root.rstrip("/")
    if isinstance(fs, AbstractArchiveFileSystem):
        # Sorted by parts, the order a depth-first walk over sorted folders gives (`a/z.png` before `a.png`).
        for name, info in sorted(_archive_members(fs, root), key=lambda m: m[0].split("/")):
            rel = name[len(root) + 1:] if root else name  # exact: `/abs/a.png` must stay absolute
            yield FileInfo(to_uri(fs, name, chain), int(info.get("size") or 0), _version(info), rel)
        return

    def walk(directory: str) -> Iterator[FileInfo]:
        entries = sorted(retry(lambda: fs.ls(directory, detail=True), what=url), key=lambda e: e["name"])
        for entry in entries:
            name = entry["name"].rstrip("/")
            # Only entries inside `directory`: a store that resolves `a/..` to its parent must not loop.
            if _is_hidden(posixpath.basename(name)) or not name.startswith(directory + "/"):
                continue
            if entry["type"] == "directory":
                yield from walk(name)
            else:
                rel = name[len(root) + 1:]  # one separator only: `prefix//a.png` is the absolute `/a.png`
                yield FileInfo(to_uri(fs, name, chain), int(entry.get("size") or 0), _version(entry), rel)

    yield from walk(root)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri, archives=False)
    return retry(lambda: fs.cat_file(path), what=uri)


def exists(uri: str) -> bool:
    fs, path = resolve(uri, archives=False)
    return retry(lambda: fs.exists(path), what=uri)


def write_bytes(uri: str, data: bytes) -> None:
    """Write so that a crash never leaves a partial file under the final name.

    Local files: write a hidden temporary file beside the target, then rename (atomic on POSIX).
    Object stores and memory: one PUT, which is atomic by itself.
    """
    if "::" in uri or uri.startswith(("zip://", "tar://")):
        raise StorageError(f"cannot write into an archive: {uri}", "write outputs to a folder or bucket")
    fs, path = resolve(uri, archives=False)
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        # Fixed length, not `.{name}.tmp`: a legal name of 230 bytes must not get an illegal temporary one.
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex[:16]}")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    retry(lambda: fs.pipe_file(path, data), what=uri)


def remove(uri: str) -> None:
    fs, path = resolve(uri, archives=False)
    with contextlib.suppress(StorageError):  # already gone: removal is idempotent
        retry(lambda: fs.rm_file(path), what=uri)


def list_names(url: str, suffix: str = "") -> list[str]:
    """Sorted base names of the files directly in a folder (empty when it does not exist)."""
    fs, path = resolve(url)
    try:
        entries = retry(lambda: fs.ls(path, detail=True), what=url)
    except StorageError:
        return []
    names = (posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] != "directory")
    return sorted(n for n in names if n.endswith(suffix) and not _is_hidden(n))
