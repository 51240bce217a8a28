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
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import fsspec
from fsspec.archive import AbstractArchiveFileSystem
from fsspec.asyn import AsyncFileSystem
from fsspec.exceptions import FSTimeoutError
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
                    "ServiceUnavailable", "RequestTimeout",
                    "XAmzContentSHA256Mismatch"}  # a body damaged on its way (s3fs retried it; it now makes one try)
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


# ---- S3 client: one bounded try per call; `retry` alone retries, within its budget ---------------------------
# Under `retry`, botocore (legacy mode: 5 tries of each request) and s3fs (5 tries of each call; a read nests two
# of its loops) used to retry as well, each try waiting out s3fs's 15 s read timeout: one attempt of ours to read
# from an endpoint that accepts TCP and never answers took 7 minutes, whatever the budget said, and a write never
# ended (issue 18). So the layers under `retry` make one try each, and every wait in a try is bounded:
# - connect: 5 s. A TCP handshake takes milliseconds even across an ocean; past 5 s the address is unroutable or
#   firewalled, and `retry` tries again.
# - read: how long the server may stay silent: before its answer (after a PUT's last body byte: aiohttp starts
#   that clock only once the body is sent, so no upload is cut for being large), and between two chunks of a
#   download, so a transfer that progresses is never cut. A quarter of the budget, so that >= 4 tries fit in it
#   while a server hangs, kept within [5 s, 30 s]: a busy but healthy server may take seconds to answer a PUT it
#   must store first, and 30 s is twice s3fs's own default.
# - a PUT: botocore asks for "100 Continue" before it sends the body, and aiohttp runs no clock while it waits for
#   that or sends the body, so a silent server (or one that stops reading: a hung process whose socket buffer is
#   full) held any upload forever; `_put` cuts the whole try at connect + read + size / 256 KiB/s.
# `retry` starts a try only while its budget lasts, so a call gives up within budget + one try, and a try that meets
# silence ends at the request left unanswered: connect + read timeout at most (an upload: its `_put` deadline).
# Default budget 120 s: read timeout 30 s, gives up within 155 s; budget 3 s: read timeout 5 s, within 13 s.
# Not the tighter "remaining budget + margin" per try: a try that started late would cut a healthy transfer.
# AWS_MAX_ATTEMPTS and AWS_RETRY_MODE do not apply: PIXELMILL_STORAGE_RETRY_SECONDS is the one setting.
S3_CONNECT_TIMEOUT = 5.0
S3_READ_TIMEOUT_MIN, S3_READ_TIMEOUT_MAX = 5.0, 30.0
S3_UPLOAD_MIN_RATE = 256 * 1024  # bytes/s: a slower link gets its PUTs cut, and retried


def s3_read_timeout(budget: float) -> float:
    """Seconds an S3 server may stay silent in one try: a quarter of the retry budget, within [5 s, 30 s]."""
    return min(S3_READ_TIMEOUT_MAX, max(S3_READ_TIMEOUT_MIN, budget / 4))


def upload_deadline(size: int, budget: float | None = None) -> float:
    """Seconds one try of a `size`-byte PUT may take in all, sending included (see `_put`)."""
    budget = storage_retry_seconds() if budget is None else budget
    return S3_CONNECT_TIMEOUT + s3_read_timeout(budget) + size / S3_UPLOAD_MIN_RATE


def _s3_options() -> dict:
    """s3fs's arguments: the endpoint from the AWS variables, one try per request, bounded waits (see above)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    # botocore's `max_attempts` counts retries (1 would be 2 tries); `total_max_attempts` counts tries.
    options: dict = {"config_kwargs": {"connect_timeout": S3_CONNECT_TIMEOUT,
                                       "read_timeout": s3_read_timeout(storage_retry_seconds()),
                                       "retries": {"total_max_attempts": 1, "mode": "standard"}}}
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def _one_try(fs: fsspec.AbstractFileSystem) -> None:
    """Turn off s3fs's own loop (5 tries of every call) on the S3 filesystems a URL reaches, an archive's too.

    An attribute, not an argument: s3fs hands unknown constructor arguments (`retries=1`) to aiobotocore's
    session, which refuses them."""
    for candidate in (fs, getattr(getattr(fs, "fo", None), "fs", None)):
        if candidate is not None and hasattr(candidate, "call_s3"):
            candidate.retries = 1


def _put(fs: fsspec.AbstractFileSystem, path: str, data: bytes, **kwargs) -> None:
    """fs.pipe_file; on an async backend (s3fs) one try ends by `upload_deadline`, even when the server stops
    reading the body (fsspec cancels it)."""
    if not isinstance(fs, AsyncFileSystem):
        fs.pipe_file(path, data, **kwargs)
        return
    deadline = upload_deadline(len(data))
    try:
        fs.pipe_file(path, data, timeout=deadline, **kwargs)
    except FSTimeoutError as exc:
        raise TimeoutError(f"a PUT of {len(data)} bytes got no answer in {deadline:.0f} s (the server stopped "
                           f"reading it, or never answered)") from exc


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
        if "::" in url and options:  # an archive on S3 is opened, its index read, while it is resolved
            _one_try(fsspec.filesystem("s3", **options["s3"]))  # the instance fsspec's cache hands the chain
        fs, path = fsspec.core.url_to_fs(url, **options)
    except FileNotFoundError as exc:  # an archive whose file is missing
        raise StorageError(f"{url} does not exist", "check the path, bucket and archive name") from exc
    except (ValueError, ImportError) as exc:
        raise StorageError(f"cannot open {url}: {exc}", "use a local path, s3://, memory://, zip or tar") from exc
    _one_try(fs)
    return fs, path


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


def _timed_out(exc: BaseException | None) -> str | None:
    """Which wait ran out, from exc's chain of causes: 'connect', 'read' (the read timeout), 'other' (a deadline
    such as `_put`'s), or None when no timeout is in it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names = _class_names(exc)
        if names & {"botocore.exceptions.ConnectTimeoutError", "aiohttp.client_exceptions.ConnectionTimeoutError"}:
            return "connect"
        if names & {"botocore.exceptions.ReadTimeoutError", "aiohttp.client_exceptions.SocketTimeoutError"}:
            return "read"
        if isinstance(exc, TimeoutError):
            return "other"
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return None


def _outage_hint(what: str, budget: float, exc: BaseException | None = None) -> str:
    if "s3://" in what:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        where = f"the S3 endpoint {endpoint} (AWS_ENDPOINT_URL)" if endpoint else "AWS_ENDPOINT_URL (unset: AWS S3)"
        server = f"check {where}, that the S3 server is up, and the network"
        timeout = _timed_out(exc)
        if timeout == "connect":
            server += f" (no connection in {S3_CONNECT_TIMEOUT:g} s: a wrong address or port, or a firewall)"
        elif timeout:
            within = f"in {s3_read_timeout(budget):g} s" if timeout == "read" else "in time"
            server += f" (it took the connection but sent no answer {within}: a hung or overloaded server, or a proxy)"
    else:
        server = "check that the storage server is up and reachable, and the network"
    return f"{server}; PIXELMILL_STORAGE_RETRY_SECONDS (now {budget:g}) sets how long to keep retrying"


def retry(fn: Callable[[], T], *, what: str, budget: float | None = None, base_delay: float = 0.5,
          max_delay: float = 15.0) -> T:
    """Call fn, retrying transient errors with jittered exponential backoff for up to `budget` seconds.

    `budget` defaults to $PIXELMILL_STORAGE_RETRY_SECONDS (120), read at each call. Every wait is logged;
    when the budget is spent a StorageError names `what` and what to check. A missing object or a
    refused permission fails at once, and any other permanent error is raised as it is. A try starts only
    within the budget and fn must bound its own tries (S3: see "S3 client" above), so a call gives up within
    budget + one try.
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
                                   f"{elapsed:.0f} s)", _outage_hint(what, budget, exc)) from exc
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


def stat(uri: str) -> tuple[int, str] | None:
    """(size, version) of one file, the version as listings give it (ETag, CRC or mtime); None when it is gone."""
    fs, path = resolve(uri, archives=False)
    try:
        info = retry(lambda: fs.info(path), what=uri)
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise
    return int(info.get("size") or 0), _version(info)


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
        retry(lambda: _put(fs, path, data), what=uri)
    fault_point("storage.write", uri)


def _create(path: str, mode: str = "wb"):
    """A local file open for writing (or appending); its folder is made when it is missing (not checked on every
    file)."""
    try:
        return open(path, mode)  # noqa: SIM115  (the caller's `with` closes it)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return open(path, mode)  # noqa: SIM115


def remove(uri: str) -> None:
    fs, path = resolve(uri, archives=False)
    with contextlib.suppress(StorageError):  # already gone: removal is idempotent
        retry(lambda: fs.rm_file(path), what=uri)


def _entries(url: str) -> list[dict]:
    """What `ls` says is directly in a folder (nothing when it does not exist), outages retried: since s3fs makes
    one try per call, every listing goes through the retry budget here."""
    fs, path = resolve(url)

    def ls() -> list[dict]:
        try:
            return fs.ls(path, detail=True)
        except FileNotFoundError:
            return []

    return retry(ls, what=url)


def list_names(url: str, suffix: str = "") -> list[str]:
    """Sorted base names of the files directly in a folder (empty when it does not exist)."""
    names = (posixpath.basename(e["name"].rstrip("/")) for e in _entries(url) if e["type"] != "directory")
    return sorted(n for n in names if n.endswith(suffix) and not _is_hidden(n))


def list_folders(url: str) -> list[str]:
    """Sorted base names of the folders directly in a folder (empty when it does not exist)."""
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in _entries(url) if e["type"] == "directory")


# ---------------------------------------------------------------- conditional writes
# What the registry needs so that two processes (two machines) never take one model version or silently undo
# each other's alias move: create a file only if it is absent, and replace a small file only if nobody changed
# it since it was read. Local files: a hard link (or O_EXCL) and an flock; S3: conditional PUTs (If-None-Match,
# If-Match; AWS S3 and SeaweedFS >= 4 honour both); memory:// and other filesystems: a lock in this process.

_PROCESS_LOCK = threading.Lock()
_LOCK_POLL_SECONDS = 0.02


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol
    return "s3" in ((protocol,) if isinstance(protocol, str) else protocol) and hasattr(fs, "call_s3")


def _condition_answer(exc: BaseException) -> str | None:
    """'failed' for a 412 (the condition did not hold), 'conflict' for a 409 (another conditional write to the
    same key was in flight: try again), None for anything else; s3fs wraps botocore's error in an OSError."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        status, code = _http_answer(exc)
        if status == 412 or code == "PreconditionFailed":
            return "failed"
        if status == 409 or code == "ConditionalRequestConflict":
            return "conflict"
        exc = exc.__cause__ or exc.__context__
    return None


def _call_s3(fs, method: str, deadline: float, **kwargs):
    """fs.call_s3 that ends by `deadline` seconds like `_put`: botocore runs no clock while it waits for a silent
    server's answer to a PUT."""
    try:
        return fs.call_s3(method, timeout=deadline, **kwargs)
    except FSTimeoutError as exc:
        raise TimeoutError(f"{method} got no answer in {deadline:.0f} s") from exc


def _s3_put_if(fs, path: str, uri: str, data: bytes, condition: dict, unique: bool) -> bool | None:
    """One conditional PUT, transient errors retried: True written, False the condition failed, None a 409.

    A PUT that landed but whose answer was lost is retried and then fails its own condition, so a failure is
    a success when the object now holds our bytes: always when `data` is unique to this caller, else only
    after a retry that we saw (resolve() turns s3fs's and botocore's own retries off, so every try is seen)."""
    bucket, key, _ = fs.split_path(path)
    tries = 0

    def put() -> bool | None:
        nonlocal tries
        tries += 1
        try:
            _call_s3(fs, "put_object", upload_deadline(len(data)), Bucket=bucket, Key=key, Body=data, **condition)
            return True
        except Exception as exc:
            answer = _condition_answer(exc)
            if answer == "failed":
                return (unique or tries > 1) and _s3_read(fs, path) == data
            if answer == "conflict":
                return None
            raise

    try:
        return retry(put, what=uri)
    finally:
        fs.invalidate_cache(path)  # s3fs's listing cache does not know about writes made through call_s3


def _s3_read(fs, path: str) -> bytes | None:
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create a file that must not exist yet, whole: True when this call created it, False when it was there.

    However many processes on however many machines race for one name, exactly one gets True. Local: a
    temporary file hard-linked to the name (atomic, and fails when the name exists; O_EXCL where the filesystem
    has no hard links); S3: a PUT with `If-None-Match: *`; memory:// and other filesystems: a check and a write
    under a lock of this process, atomic among its threads only. On S3 give `data` that only this caller writes
    (a random token): a PUT retried after a lost answer is told from a lost race by reading the bytes back."""
    fs, path = resolve(uri, archives=False)
    if isinstance(fs, LocalFileSystem):
        return _create_local(path, data)
    if _is_s3(fs):
        while True:
            created = _s3_put_if(fs, path, uri, data, {"IfNoneMatch": "*"}, unique=True)
            if created is not None:
                return created
            time.sleep(random.uniform(0.01, 0.1))  # 409: the other write settles first
    with _PROCESS_LOCK:
        if retry(lambda: fs.exists(path), what=uri):
            return False
        retry(lambda: fs.pipe_file(path, data), what=uri)
        return True


def _create_local(path: str, data: bytes) -> bool:
    tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex[:16]}")
    with _create(tmp) as handle:
        handle.write(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)
    try:  # no hard links here (some FUSE and SMB mounts): the name is taken at once, its bytes follow
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return True


def update_bytes(uri: str, change: Callable[[bytes | None], bytes | None], lock_timeout: float = 60.0) -> bytes | None:
    """Read-change-write a small file so that no other writer's update between our read and our write is lost.

    `change(current)` gets the content (None: no file) and returns the new content, or None to leave the file
    as it is; it may raise to refuse, and may be called again with newer content when another writer got in
    first. Returns the content `change` saw last. Local: an flock on a hidden `.NAME.lock` beside the file
    around read, change and write (the kernel drops it when its process dies: nothing goes stale; readers
    need no lock, the write is a rename); S3: `If-Match` the ETag read (`If-None-Match: *` when there was no
    file), from the read again when the PUT is refused; memory:// and others: a lock of this process."""
    fs, path = resolve(uri, archives=False)
    if isinstance(fs, LocalFileSystem):
        with _flock(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock"), uri, lock_timeout):
            current = _read_local(path) if os.path.exists(path) else None
            new = change(current)
            if new is not None:
                write_bytes(uri, new)
            return current
    if _is_s3(fs):
        bucket, key, _ = fs.split_path(path)
        while True:
            try:  # the ETag before the bytes: bytes newer than the ETag only make the PUT fail and go round again
                etag = retry(lambda: _call_s3(fs, "head_object", upload_deadline(0), Bucket=bucket, Key=key),
                             what=uri)["ETag"]
                current = retry(lambda: fs.cat_file(path), what=uri)
            except StorageError as exc:
                if not isinstance(exc.__cause__, FileNotFoundError):
                    raise
                etag, current = None, None
            new = change(current)
            if new is None:
                return current
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            if _s3_put_if(fs, path, uri, new, condition, unique=False):
                return current
            time.sleep(random.uniform(0.01, 0.1))  # another writer got in first: read its content
    with _PROCESS_LOCK:
        current = _s3_read(fs, path) if retry(lambda: fs.exists(path), what=uri) else None
        new = change(current)
        if new is not None:
            retry(lambda: fs.pipe_file(path, new), what=uri)
        return current


@contextlib.contextmanager
def _flock(lock_path: str, uri: str, timeout: float) -> Iterator[None]:
    """An exclusive flock on lock_path, polled until `timeout`; the lock file itself is never removed (removing
    it would let two processes lock two different files of one name)."""
    import fcntl  # POSIX only, like the rest of the local write path's guarantees

    with _create(lock_path, "ab") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StorageError(f"cannot update {uri}: another process has held {lock_path} for over "
                                       f"{timeout:g} s", "a process that hangs while holding it: find it with "
                                       f"`fuser {lock_path}` and stop it") from None
                time.sleep(_LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
