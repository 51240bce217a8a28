import errno
import io
import logging
import os
import re
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import botocore.exceptions
import pytest

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.errors import ConfigError, StorageError
from tests.seaweed import SeaweedServer

FILES = {"b.jpg": b"B", "a/z.png": b"AZ", "a/b/c.gif": b"ABC", "c.txt": b"C", ".DS_Store": b"x",
         "__MACOSX/a.jpg": b"mac"}
ORDER = ["a/b/c.gif", "a/z.png", "b.jpg", "c.txt"]  # sorted, depth-first; hidden entries skipped


def populate(url: str) -> None:
    for name, data in FILES.items():
        storage.write_bytes(storage.join(url, name), data)


def test_normalize_url():
    assert storage.normalize_url("rel/dir") == "file://" + os.path.abspath("rel/dir")
    assert storage.normalize_url("s3://bucket/x/") == "s3://bucket/x"
    assert storage.normalize_url("/data/a.zip") == "zip://::file:///data/a.zip"
    assert storage.normalize_url("s3://b/a.tar.gz") == "tar://::s3://b/a.tar.gz"
    assert storage.normalize_url("zip://::memory://a.zip") == "zip://::memory://a.zip"


def test_sibling_and_join_keep_archive_chains():
    assert storage.sibling("zip://d/a.png::file:///x.zip", "a_P.png") == "zip://d/a_P.png::file:///x.zip"
    assert storage.sibling("zip://a.png::file:///x.zip", "m.png") == "zip://m.png::file:///x.zip"
    assert storage.sibling("s3://bucket/d/a.png", "m.png") == "s3://bucket/d/m.png"
    assert storage.join("/data/a.zip", "d/x.png") == "zip://d/x.png::file:///data/a.zip"


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_iter_files_is_recursive_sorted_and_skips_hidden(kind, tmp_path, memory_url):
    root = str(tmp_path) if kind == "local" else memory_url
    populate(root)
    found = list(storage.iter_files(root))
    assert [f.rel for f in found] == ORDER
    assert [storage.read_bytes(f.uri) for f in found] == [FILES[n] for n in ORDER]
    assert all(f.size == len(FILES[f.rel]) and f.version for f in found)


def make_archive(kind: str, files: dict[str, bytes] = FILES) -> bytes:
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("kind,suffix", [("zip", ".zip"), ("tar", ".tar.gz")])
def test_archives_list_and_read_like_folders(kind, suffix, tmp_path):
    path = tmp_path / f"photos{suffix}"
    path.write_bytes(make_archive(kind))
    found = list(storage.iter_files(str(path)))
    assert [f.rel for f in found] == ORDER
    assert found[0].uri.startswith(f"{kind}://") and found[0].uri.endswith(f"::file://{path}")
    assert [storage.read_bytes(f.uri) for f in found] == [FILES[n] for n in ORDER]


HOSTILE = ["ok.png", "../../evil.png", "/abs/evil.png", "abs/evil.png", "a/../../b.png", "./dot.png",
           "new\nline.png", "dir\\..\\win.png", "x" * 250 + ".png", "fötö-日本.png", "sub/deep.png"]


@pytest.mark.parametrize("kind,suffix", [("zip", ".zip"), ("tar", ".tar.gz")])
def test_every_archive_member_is_listed_once_by_its_exact_name(kind, suffix, tmp_path):
    path = tmp_path / f"hostile{suffix}"
    path.write_bytes(make_archive(kind, {name: name.encode() for name in HOSTILE}))
    found = list(storage.iter_files(str(path)))
    assert sorted(f.rel for f in found) == sorted(HOSTILE)  # `..` folders and `/abs` no longer vanish
    assert len({f.uri for f in found}) == len(HOSTILE)  # `/abs/evil.png` and `abs/evil.png` stay two
    safe = {f.rel: f for f in found if ".." not in f.rel.split("/") and not f.rel.startswith("/")}
    assert {rel: storage.read_bytes(f.uri) for rel, f in safe.items()} == {rel: rel.encode() for rel in safe}


def test_object_keys_with_dot_dot_are_listed(memory_url):
    for key in ("ok.png", "a/../b.png", ".hidden/x.png"):
        storage.write_bytes(f"{memory_url}/{key}", b"x")
    assert [f.rel for f in storage.iter_files(memory_url)] == ["a/../b.png", "ok.png"]


def test_a_legal_long_name_gets_a_legal_temporary_name(tmp_path):
    name = "é" * 125 + ".png"  # 254 bytes: legal, but `.{name}.tmp-{uuid}` was not
    storage.write_bytes(str(tmp_path / name), b"x")
    assert os.listdir(tmp_path) == [name]
    assert [f.rel for f in storage.iter_files(str(tmp_path))] == [name]


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    target = str(tmp_path / "deep" / "dir" / "out.bin")
    storage.write_bytes(target, b"first")
    storage.write_bytes(target, b"second")
    with open(target, "rb") as f:
        assert f.read() == b"second"
    assert os.listdir(tmp_path / "deep" / "dir") == ["out.bin"]


def test_failed_local_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    class Boom(bytes):
        pass

    with pytest.raises(TypeError):
        storage.write_bytes(str(target), object())  # the write itself fails midway
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_archives_are_read_only(tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(make_archive("zip"))
    with pytest.raises(StorageError, match="cannot write into an archive"):
        storage.write_bytes(f"zip://new.png::file://{path}", b"x")


def test_missing_paths_fail_at_once_naming_the_url(tmp_path, memory_url):
    for url in (str(tmp_path / "nope"), memory_url + "/nope"):
        with pytest.raises(StorageError, match="nope does not exist") as info:
            list(storage.iter_files(url))
        assert info.value.hint
    with pytest.raises(StorageError, match="does not exist"):
        storage.read_bytes(str(tmp_path / "missing.jpg"))
    with pytest.raises(StorageError, match="does not exist"):
        list(storage.iter_files(str(tmp_path / "missing.zip")))


# ---- transient errors and retries -------------------------------------------------------------------------

def _raw_s3(port: int):
    """An s3fs client that retries nothing itself, so the first error it meets is the one raised."""
    import s3fs

    fs = s3fs.S3FileSystem(key="k", secret="s", skip_instance_cache=True, config_kwargs={"retries": {"total_max_attempts": 1}},
                           client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"})
    fs.retries = 1
    return fs


@pytest.fixture(scope="module")
def s3_raises():
    """The exception s3fs really raises for a GetObject answered with (status, code), or refused (None)."""

    class Answer(BaseHTTPRequestHandler):
        def do_HEAD(self):  # s3fs asks for the object's size first
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()

        def do_GET(self):
            status, code = self.server.answer
            body = f"<Error><Code>{code}</Code><Message>please try again</Message></Error>".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def raised(answer: tuple[int, str] | None) -> Exception:
        if answer is None:
            with socket.socket() as s:  # a port nobody listens on: connection refused
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        else:
            server.answer, port = answer, server.server_address[1]
        with pytest.raises(Exception) as info:
            _raw_s3(port).cat_file("bucket/key")
        return info.value

    yield raised
    server.shutdown()


ANSWERS = [
    (None, True),  # EndpointConnectionError from aiohttp's ClientConnectorError: the server is down
    ((500, "InternalError"), True),  # OSError(EREMOTEIO): SeaweedFS warming up after a restart
    ((502, "BadGateway"), True), ((503, "SlowDown"), True), ((503, "ServiceUnavailable"), True),
    ((504, "GatewayTimeout"), True),
    ((404, "NoSuchKey"), False), ((403, "AccessDenied"), False), ((400, "InvalidRequest"), False),
]


@pytest.mark.parametrize("answer,transient", ANSWERS, ids=[f"{a[0]}-{a[1]}" if a else "refused" for a, _ in ANSWERS])
def test_is_transient_on_what_s3fs_raises(s3_raises, answer, transient):
    exc = s3_raises(answer)
    assert storage.is_transient(exc) is transient, repr(exc)


def _connection_key():
    from aiohttp.client_reqrep import ConnectionKey

    return ConnectionKey("127.0.0.1", 9000, False, True, None, None, None)


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


URL = "http://127.0.0.1:9000/bucket/key"


EXCEPTIONS = {  # name: (how to make it, transient)
    "reset": (lambda: ConnectionResetError(), True),
    "timeout": (lambda: TimeoutError(), True),
    "503 in words": (lambda: OSError("503 Service Unavailable"), True),
    "EREMOTEIO": (lambda: OSError(errno.EREMOTEIO, "We encountered an internal error, please try again."), True),
    "ECONNREFUSED": (lambda: OSError(errno.ECONNREFUSED, "refused"), True),
    "EHOSTUNREACH": (lambda: OSError(errno.EHOSTUNREACH, "no route to host"), True),
    "ENETUNREACH": (lambda: OSError(errno.ENETUNREACH, "network is unreachable"), True),
    "EndpointConnectionError": (lambda: botocore.exceptions.EndpointConnectionError(endpoint_url=URL), True),
    "ConnectionClosedError": (lambda: botocore.exceptions.ConnectionClosedError(endpoint_url=URL), True),
    "ReadTimeoutError": (lambda: botocore.exceptions.ReadTimeoutError(endpoint_url=URL), True),
    "ConnectTimeoutError": (lambda: botocore.exceptions.ConnectTimeoutError(endpoint_url=URL), True),
    "ClientConnectorError": (lambda: aiohttp.ClientConnectorError(_connection_key(), ConnectionRefusedError()), True),
    "ServerDisconnectedError": (lambda: aiohttp.ServerDisconnectedError(), True),
    "ClientPayloadError": (lambda: aiohttp.ClientPayloadError("body cut short"), True),
    "502 as a cause": (lambda: _caused(OSError(errno.EIO, "gateway"), aiohttp.ClientResponseError(None, (), status=502)),
                       True),
    "not found": (lambda: FileNotFoundError(), False),
    "permission": (lambda: PermissionError(), False),
    "value": (lambda: ValueError("x"), False),
    "EIO": (lambda: OSError(errno.EIO, "disk"), False),
    "port 5031": (lambda: OSError(f"cannot parse {URL.replace('9000', '5031')}"), False),
    "certificate": (lambda: botocore.exceptions.SSLError(endpoint_url=URL, error="certificate verify failed"), False),
    "400": (lambda: aiohttp.ClientResponseError(None, (), status=400), False),
    # Our own error once the retries are spent: a task-level retry would only repeat the wait.
    "StorageError": (lambda: _caused(StorageError("cannot reach x", "check"), ConnectionRefusedError()), False),
}


@pytest.mark.parametrize("name", list(EXCEPTIONS))
def test_is_transient(name):
    make, transient = EXCEPTIONS[name]
    assert storage.is_transient(make()) is transient


def _failing(n: int, exc: BaseException | None = None):
    """fn that raises exc (a reset connection) n times, forever for n < 0, then returns "ok"."""
    def fn():
        fn.calls += 1
        if n < 0 or fn.calls <= n:
            raise exc or ConnectionResetError("Connection reset by peer")
        return "ok"

    fn.calls = 0
    return fn


def test_retry_recovers_and_logs_one_line_per_wait(monkeypatch, caplog):
    monkeypatch.setenv("PIXELMILL_STORAGE_RETRY_SECONDS", "3")
    fn = _failing(3)
    with caplog.at_level(logging.WARNING, logger="pixelmill.storage"):
        assert storage.retry(fn, what="s3://bucket/key", base_delay=0.05) == "ok"
    assert fn.calls == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "pixelmill.storage"]
    assert len(lines) == 3
    assert re.fullmatch(r"storage: s3://bucket/key failed \(ConnectionResetError: Connection reset by peer\), "
                        r"retrying in \d+\.\d s \(attempt 1, 0 s of 3 s\)", lines[0])
    assert "(attempt 3," in lines[2]


def test_retry_waits_with_jitter_up_to_the_budget_then_names_the_url(monkeypatch, caplog):
    monkeypatch.setenv("PIXELMILL_STORAGE_RETRY_SECONDS", "3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    down = botocore.exceptions.EndpointConnectionError(endpoint_url=URL)
    fn = _failing(-1, down)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pixelmill.storage"), pytest.raises(StorageError) as info:
        storage.retry(fn, what="s3://bucket/key", base_delay=0.2)
    elapsed = time.monotonic() - start
    assert 3.0 <= elapsed < 4.0  # the waits add up to the budget, the last one cut to fit
    assert info.value.__cause__ is down
    message, hint = info.value.message, info.value.hint
    assert message.startswith("cannot reach s3://bucket/key: EndpointConnectionError")
    assert "http://127.0.0.1:9000" in hint and "AWS_ENDPOINT_URL" in hint and "up" in hint and "network" in hint
    waits = [r.args[2] for r in caplog.records if r.name == "pixelmill.storage"]
    assert len(waits) == fn.calls - 1 >= 3
    for attempt, wait in enumerate(waits[:-1], start=1):  # jittered: between half and all of the backoff
        assert 0.5 * 0.2 * 2 ** (attempt - 1) <= wait <= 0.2 * 2 ** (attempt - 1)


def test_retry_budget_comes_from_the_environment_at_call_time(monkeypatch):
    monkeypatch.setenv("PIXELMILL_STORAGE_RETRY_SECONDS", "0")
    fn = _failing(1)
    with pytest.raises(StorageError, match=r"cannot reach x: ConnectionResetError.*after 1 attempt in 0 s"):
        storage.retry(fn, what="x")
    assert fn.calls == 1
    monkeypatch.setenv("PIXELMILL_STORAGE_RETRY_SECONDS", "soon")
    with pytest.raises(ConfigError, match="PIXELMILL_STORAGE_RETRY_SECONDS='soon'"):
        storage.retry(_failing(1), what="x")


@pytest.mark.parametrize("exc,raised", [
    (ValueError("bad request"), ValueError),
    (FileNotFoundError("NoSuchKey"), StorageError),
    (PermissionError("AccessDenied"), StorageError),
])
def test_retry_fails_at_once_on_permanent_errors(exc, raised):
    fn = _failing(-1, exc)
    with pytest.raises(raised):
        storage.retry(fn, what="x", budget=30)
    assert fn.calls == 1


@pytest.mark.s3
def test_s3_listing_reading_writing(s3_bucket):
    root = f"s3://{s3_bucket}/photos"
    populate(root)
    found = list(storage.iter_files(root))
    assert [f.rel for f in found] == ORDER
    assert all(f.version for f in found)  # ETags
    assert storage.read_bytes(found[1].uri) == FILES["a/z.png"]
    zip_url = f"s3://{s3_bucket}/photos.zip"
    storage.write_bytes(zip_url, make_archive("zip"))
    assert [f.rel for f in storage.iter_files(zip_url)] == ORDER


@pytest.mark.s3
def test_s3_missing_bucket_fails_with_its_name(s3_server):
    with pytest.raises(StorageError, match="s3://no-such-bucket-pixelmill/x does not exist"):
        list(storage.iter_files("s3://no-such-bucket-pixelmill/x"))


@pytest.mark.s3
@pytest.mark.slow
def test_reads_ride_out_an_s3_server_restart(tmp_path, monkeypatch):
    server = SeaweedServer(tmp_path)  # its own: stopping the session's server would break the other s3 tests
    server.start()
    try:
        for key, value in server.environ().items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.setenv("PIXELMILL_STORAGE_RETRY_SECONDS", "120")
        server.client().mkdir("outage")
        populate("s3://outage/photos")
        server.stop(kill=True)  # a crash, not a clean shutdown

        result = {}

        def read():
            try:
                found = list(storage.iter_files("s3://outage/photos"))
                result["files"] = {f.rel: storage.read_bytes(f.uri) for f in found}
            except Exception as exc:
                result["error"] = exc

        reader = threading.Thread(target=read)
        reader.start()
        # Down 15 s, then SeaweedFS needs ~20 s more on 2 cores before it serves (answering 500 InternalError
        # while it warms up): ~35 s without storage, well past the old retries (botocore's own ~10 s per
        # call; the storage layer retried none of these errors), and half the test time of a 30 s outage.
        time.sleep(15)
        assert reader.is_alive(), result
        server.start()
        reader.join(timeout=150)
        assert not reader.is_alive()
        assert "error" not in result, repr(result.get("error"))
        assert result["files"] == {name: FILES[name] for name in ORDER}
    finally:
        server.stop()


def test_a_write_that_cannot_be_renamed_leaves_no_temporary_file(tmp_path):
    (tmp_path / "taken").mkdir()  # a folder where the file should go: the rename fails, after the write
    with pytest.raises(OSError):
        storage.write_bytes(str(tmp_path / "taken"), b"data")
    assert os.listdir(tmp_path) == ["taken"] and os.listdir(tmp_path / "taken") == []


def test_local_reads_and_writes_resolve_like_fsspec(tmp_path):
    """The local fast path must name the same file fsspec would, odd characters included."""
    import fsspec

    for name in ("a b.png", "c%20d.png", "日本.png", "q?x=1#f.png"):
        url = f"file://{tmp_path}/sub/{name}"
        storage.write_bytes(url, name.encode())
        fs, path = fsspec.core.url_to_fs(url)
        assert storage.resolve(url)[1] == path and fs.cat_file(path) == name.encode()
        assert storage.read_bytes(url) == name.encode()
