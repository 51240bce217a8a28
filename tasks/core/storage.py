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
import functools
import logging
import os
import posixpath
import random
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import fsspec
from fsspec.archive import AbstractArchiveFileSystem
from fsspec.implementations.local import LocalFileSystem

from pixelmill.tasks.core.errors import PixelmillError, StorageError
from pixelmill.tasks.core.faults import fault_point
from pixelmill.tasks.core.settings import storage_retry_seconds

T = TypeVar("T")

ARCHIVE_SUFFIXES = {".zip": "zip", ".tar": "tar", ".tgz": "tar", ".tar.gz": "tar", ".tar.bz2": "tar",
                    ".tar.xz": "tar"}
# Keys in fsspec `info()` dicts that change when an object's content changes, best first.
_VERSION_KEYS = ("ETag", "etag", "CRC", "chksum", "mtime", "LastModified", "created")
log = logging.getLogger("pixelmill.storage")

# s3fs reports a 500 InternalError as OSError(EREMOTEIO). Where there is no EREMOTEIO it uses EIO, too broad
# to retry; the ClientError it is raised from still says 500.
_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ETIMEDOUT, errno.EPIPE, errno.ECONNABORTED, errno.EAGAIN,
                     errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
                     *([errno.EREMOTEIO] if hasattr(errno, "EREMOTEIO") else [])}
# For backends that say it only in words. Reason phrases, not bare status numbers: "503" is also in ports,
# sizes and ids, and a permanent error mistaken for a transient one waits out the whole budget.
_TRANSIENT_WORDS = ("SlowDown", "Throttl", "RequestTimeout", "InternalError", "ServiceUnavailable",
                    "Service Unavailable", "Internal Server Error", "Bad Gateway", "Gateway Timeout",
                    "reduce your request rate", "Connection reset", "Read timeout")
_TRANSIENT_STATUSES = {408, 429, 500, 502, 503, 504}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "InternalError",
                    "ServiceUnavailable", "RequestTimeout"}
# The HTTP stacks under fsspec's backends raise their own connection errors, not Python's. Named, not
# imported, so that a backend that is not installed costs nothing: botocore and aiohttp (s3fs, gcsfs,
# http), requests (webhdfs and others). Each name covers its subclasses (EndpointConnectionError, ...).
_TRANSIENT_CLASSES = {"botocore.exceptions.ConnectionError", "botocore.exceptions.HTTPClientError",
                      "aiohttp.client_exceptions.ClientConnectionError",
                      "aiohttp.client_exceptions.ClientPayloadError",
                      "requests.exceptions.ConnectionError", "requests.exceptions.Timeout"}
# A bad certificate or TLS setup fails the same way every time: waiting only delays the message.
_PERMANENT_CLASSES = {"botocore.exceptions.SSLError", "aiohttp.client_exceptions.ClientSSLError",
                      "aiohttp.client_exceptions.ServerFingerprintMismatch", "requests.exceptions.SSLError"}
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, PixelmillError,
              ssl.SSLCertVerificationError)


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


@functools.cache
def _local_fs() -> LocalFileSystem:
    return fsspec.filesystem("file")


def resolve(url: str, archives: bool = True) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL; fsspec caches the filesystem instances."""
    url = normalize_url(url, archives)
    if url.startswith("file://") and "::" not in url:
        # Every local read and write comes here: fsspec's URL parsing would cost 0.1 ms a call, and its
        # answer for a plain file:// URL is always this one (the path after the scheme, unchanged).
        return _local_fs(), url[len("file://"):]
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


def _class_names(exc: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}


def _http_answer(exc: BaseException) -> tuple[int | None, str]:
    """(HTTP status, error code) of a server's answer carried by exc, or (None, "") when there is none."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore's ClientError, the cause of s3fs's translated OSErrors
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode"), response.get("Error", {}).get("Code", "")
    # aiohttp (status; its deprecated `code` is not asked), gcsfs and urllib (code), requests
    status = getattr(exc, "status", None) or getattr(exc, "code", None) or getattr(response, "status_code", None)
    return (status, "") if isinstance(status, int) and 100 <= status < 600 else (None, "")


def _verdict(exc: BaseException) -> bool | None:
    """True or False when this exception alone says whether a retry can help, None when it does not."""
    names = _class_names(exc)
    if isinstance(exc, _PERMANENT) or names & _PERMANENT_CLASSES:
        return False
    if isinstance(exc, ConnectionError | TimeoutError) or names & _TRANSIENT_CLASSES:
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    status, code = _http_answer(exc)
    if status is not None or code:
        return status in _TRANSIENT_STATUSES or code in _TRANSIENT_CODES
    if any(word in f"{type(exc).__name__} {exc}" for word in _TRANSIENT_WORDS):
        return True
    return None


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: refused or dropped connections, timeouts, throttling and 5xx answers.

    Backends wrap the telling error (s3fs raises OSError(EBUSY) from a ClientError whose code is
    SlowDown, botocore an EndpointConnectionError from aiohttp's ClientConnectorError), so the chain
    of causes is read until one exception decides. A PixelmillError is final: its retries are spent.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        verdict = _verdict(exc)
        if verdict is not None:
            return verdict
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return False


def _short_reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = text[:157] + "..." if len(text) > 160 else text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _outage_hint(what: str, budget: float) -> str:
    if "s3://" in what:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        where = f"the S3 endpoint {endpoint} (AWS_ENDPOINT_URL)" if endpoint else "AWS_ENDPOINT_URL (unset: AWS S3)"
        server = f"check {where}, that the S3 server is up, and the network"
    else:
        server = "check that the storage server is up and reachable, and the network"
    return f"{server}; PIXELMILL_STORAGE_RETRY_SECONDS (now {budget:g}) sets how long to keep retrying"


def retry(fn: Callable[[], T], *, what: str, budget: float | None = None, base_delay: float = 0.5,
          max_delay: float = 15.0) -> T:
    """Call fn, retrying transient errors with jittered exponential backoff for up to `budget` seconds.

    `budget` defaults to $PIXELMILL_STORAGE_RETRY_SECONDS (120), read at each call. Every wait is logged;
    when the budget is spent a StorageError names `what` and what to check. A missing object or a
    refused permission fails at once, and any other permanent error is raised as it is.
    """
    budget = storage_retry_seconds() if budget is None else budget
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except FileNotFoundError as exc:
            raise StorageError(f"{what} does not exist", "check the URL, bucket name and prefix") from exc
        except PermissionError as exc:
            raise StorageError(f"no permission for {what}", "check the credentials (AWS_* variables)") from exc
        except Exception as exc:
            if not is_transient(exc):
                raise
            elapsed = time.monotonic() - start
            # Jitter spreads many workers' retries so a server coming back is not hit by all at once.
            delay = min(max_delay, base_delay * 2 ** min(attempt - 1, 30)) * random.uniform(0.5, 1.0)
            delay = min(delay, budget - elapsed)  # the last try comes as late as the budget allows
            if delay <= 0:
                tries = f"{attempt} attempt{'s' * (attempt > 1)}"
                raise StorageError(f"cannot reach {what}: {_short_reason(exc)} (gave up after {tries} in "
                                   f"{elapsed:.0f} s)", _outage_hint(what, budget)) from exc
            log.warning("storage: %s failed (%s), retrying in %.1f s (attempt %d, %.0f s of %g s)",
                        what, _short_reason(exc), delay, attempt, elapsed, budget)
            time.sleep(delay)


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
    return retry(lambda: _read_local(path) if isinstance(fs, LocalFileSystem) else fs.cat_file(path), what=uri)


def _read_local(path: str) -> bytes:
    with open(path, "rb") as handle:  # what LocalFileSystem.cat_file does, without its two extra calls
        return handle.read()


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
        # Fixed length, not `.{name}.tmp`: a legal name of 230 bytes must not get an illegal temporary one.
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex[:16]}")
        try:
            with _create(tmp) as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    else:
        retry(lambda: fs.pipe_file(path, data), what=uri)
    fault_point("storage.write", uri)


def _create(path: str):
    """A new local file open for writing; its folder is made when it is missing (not checked on every file)."""
    try:
        return open(path, "wb")  # noqa: SIM115  (the caller's `with` closes it)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return open(path, "wb")  # noqa: SIM115


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
