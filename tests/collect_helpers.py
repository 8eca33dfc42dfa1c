"""A stand-in for the NVTX range sink, shared by the collect tests that check which stage ranges open."""

from __future__ import annotations


class Recorder:
    """A range sink that keeps every range opened, as its nesting path."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.paths: list[str] = []

    def push(self, name: str) -> None:
        self.stack.append(name)
        self.paths.append("/".join(self.stack))

    def pop(self) -> None:
        self.stack.pop()
