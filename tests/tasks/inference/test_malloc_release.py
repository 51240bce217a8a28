"""What apply does about glibc's malloc (tasks/inference/runtime.py): malloc_trim(0) after every shard, in whatever
process runs it (apply_local, the flow's threads, a pool or Dask worker); nothing off glibc Linux."""

from __future__ import annotations

import sys

import pytest

from pixelmill.tasks.inference import runtime
from pixelmill.tasks.inference.apply import ApplyConfig, apply_local
from tests.helpers import make_image
from tests.tasks.inference.test_apply import register_tiny


class FakeLibc:
    def __init__(self):
        self.calls: list[tuple] = []

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(runtime, "glibc", lambda: fake)
    return fake


def test_memory_is_trimmed_once_after_each_shard(tmp_path, libc):
    ws = str(tmp_path / "ws")
    register_tiny(ws)
    (tmp_path / "in").mkdir()
    for i in range(3):
        make_image(40, 30, seed=i).save(tmp_path / "in" / f"{i}.png")
    plan = apply_local(ws, "tiny", str(tmp_path / "in"), str(tmp_path / "out"), ApplyConfig(shard_size=1, threads=1))
    assert len(plan.shards) == 3
    assert libc.calls == [("malloc_trim", 0)] * 3


def test_the_c_library_is_glibc_on_linux_only(monkeypatch):
    if sys.platform == "linux" and runtime.platform.libc_ver()[0] == "glibc":
        assert callable(runtime.glibc.__wrapped__().malloc_trim)
    for platform, libc in (("darwin", ("", "")), ("win32", ("", "")), ("linux", ("musl", "1.2"))):
        monkeypatch.setattr(runtime.sys, "platform", platform)
        monkeypatch.setattr(runtime.platform, "libc_ver", lambda libc=libc: libc)
        assert runtime.glibc.__wrapped__() is None, platform


def test_release_memory_does_nothing_without_glibc(monkeypatch):
    monkeypatch.setattr(runtime, "glibc", lambda: None)
    runtime.release_memory()  # no library to call, no error
