import io
import os
import tarfile
import zipfile

import pytest

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.errors import StorageError

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


def test_retry_recovers_from_transient_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("Connection reset by peer")
        return "ok"

    assert storage.retry(flaky, what="x", base_delay=0.001) == "ok"
    assert len(calls) == 3


def test_retry_gives_up_and_does_not_retry_permanent_errors():
    calls = []

    def broken():
        calls.append(1)
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        storage.retry(broken, what="x", base_delay=0.001)
    assert len(calls) == 1

    def always_throttled():
        calls.append(1)
        raise OSError("SlowDown: please reduce your request rate")

    calls.clear()
    with pytest.raises(OSError):
        storage.retry(always_throttled, what="x", attempts=3, base_delay=0.001)
    assert len(calls) == 3


@pytest.mark.parametrize("exc,transient", [
    (ConnectionResetError(), True), (TimeoutError(), True), (OSError("503 Service Unavailable"), True),
    (FileNotFoundError(), False), (PermissionError(), False), (ValueError("x"), False),
])
def test_is_transient(exc, transient):
    assert storage.is_transient(exc) is transient


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
