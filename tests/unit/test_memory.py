"""`reused_heap` (backend/core/memory.py): large blocks from the heap inside, glibc's defaults
and a trim on leaving, once for nested and concurrent users."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from backend.core import memory
from backend.core.memory import M_MMAP_MAX, M_TRIM_THRESHOLD, reused_heap

BIG = 64 << 20  # over glibc's largest mmap threshold (32 MB): mapped afresh by default


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim", pad))
        return 1


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_libc", libc)
    return libc


def test_nested_users_set_once_and_restore_at_the_last_exit(fake: FakeLibc) -> None:
    with reused_heap():
        assert fake.calls == [("mallopt", M_MMAP_MAX, 0),
                              ("mallopt", M_TRIM_THRESHOLD, memory.KEEP)]
        with reused_heap():
            pass
        assert len(fake.calls) == 2  # the inner exit leaves the outer's settings alone
    assert fake.calls[2:] == [("mallopt", M_MMAP_MAX, 65536),
                              ("mallopt", memory.M_MMAP_THRESHOLD, 32 << 20),
                              ("mallopt", M_TRIM_THRESHOLD, 64 << 20), ("trim", 0)]


def test_an_exception_still_restores(fake: FakeLibc) -> None:
    with pytest.raises(ValueError), reused_heap():
        raise ValueError("boom")
    assert fake.calls[-1] == ("trim", 0)
    assert memory._depth == 0


def test_concurrent_users_restore_once_after_both(fake: FakeLibc) -> None:
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with reused_heap():
            inside.set()
            leave.wait(5)

    t = threading.Thread(target=other)
    with reused_heap():
        t.start()
        assert inside.wait(5)
    assert ("trim", 0) not in fake.calls  # the other thread is still inside
    leave.set()
    t.join(5)
    assert fake.calls.count(("trim", 0)) == 1
    assert fake.calls.count(("mallopt", M_MMAP_MAX, 0)) == 1


@pytest.mark.parametrize(("name", "value"), [
    ("MALLOC_MMAP_THRESHOLD_", "1000000"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0")])
def test_a_malloc_tuned_by_the_environment_is_left_alone(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    assert memory._libc is None or memory._glibc() is not None
    monkeypatch.setenv(name, value)
    assert memory._glibc() is None


@pytest.mark.skipif(memory._libc is None, reason="the C library is not glibc")
def test_large_blocks_come_from_the_heap_inside_and_are_mapped_outside() -> None:
    """The program break (`sbrk(0)`) bounds the main heap: a block below it is heap memory,
    one above it a mapping of its own."""
    libc = ctypes.CDLL(None)
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_ssize_t]

    def in_heap() -> bool:
        block = np.ones(BIG, np.uint8)
        return bool(block.ctypes.data < libc.sbrk(0))

    assert not in_heap()
    with reused_heap():
        assert in_heap()
    assert not in_heap()


THREADED = f"""
import ctypes, threading, numpy as np
BIG = {BIG}
from backend.core.memory import reused_heap
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = [ctypes.c_ssize_t]
out = []
def work():
    with reused_heap():
        block = np.ones(BIG, np.uint8)
        out.append(block.ctypes.data < libc.sbrk(0))
t = threading.Thread(target=work)
t.start()
t.join()
print(out[0])
"""


@pytest.mark.skipif(memory._libc is None, reason="the C library is not glibc")
@pytest.mark.parametrize(("env", "heap"), [({}, False), (memory.ONE_ARENA, True)])
def test_a_thread_reuses_the_heap_only_with_one_arena(env: dict[str, str], heap: bool) -> None:
    """A thread's own arena maps large blocks whatever mallopt says: the process needs
    `ONE_ARENA` from its start (the scheduler's actor gets it) for threads to reuse."""
    root = Path(__file__).resolve().parents[2]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    out = subprocess.run([sys.executable, "-c", THREADED], env=clean | env, cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(heap)
