"""The CLI's heap setting (stagemfu.heap)."""

from __future__ import annotations

import ctypes

from stagemfu import heap


def test_heap_setting_respects_the_users_choice(monkeypatch):
    """The CLI fixes glibc's mmap threshold, unless the user set MALLOC_MMAP_THRESHOLD_."""
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setattr(heap.sys, "platform", "linux")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    heap.return_large_blocks()
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4096")
    heap.return_large_blocks()
    assert calls == [(heap.M_MMAP_THRESHOLD, heap.MMAP_THRESHOLD)]
