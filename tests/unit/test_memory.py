"""`reused_heap` (backend/core/memory.py): large blocks from the heap inside, glibc's defaults
and a trim on leaving, once for nested and concurrent users."""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

from backend.core import memory
from backend.core.memory import M_MMAP_MAX, M_TRIM_THRESHOLD, RESTORE, reused_heap

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
    assert fake.calls[2:] == [*(("mallopt", p, v) for p, v in RESTORE.items()), ("trim", 0)]


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


def test_a_malloc_tuned_by_the_environment_is_left_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX_", "2")
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
