"""Virtual time and the host's timed callbacks.

Time is the number of guest instructions retired machine-wide, plus the stretches skipped while
every vCPU waited. Callbacks due at the same time run in the order they were scheduled, so a run is
repeatable.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable


@dataclass(order=True)
class Timer:
    at: int
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Timeline:
    def __init__(self) -> None:
        self.now = 0
        self._heap: list[Timer] = []
        self._seq = 0

    def schedule(self, at: int, fn: Callable[[], None]) -> Timer:
        self._seq += 1
        t = Timer(max(at, self.now), self._seq, fn)
        heapq.heappush(self._heap, t)
        return t

    def next_due(self) -> int | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].at if self._heap else None

    def run_due(self) -> bool:
        """Run every callback due by now; True if any ran."""
        ran = False
        while True:
            due = self.next_due()
            if due is None or due > self.now:
                return ran
            t = heapq.heappop(self._heap)
            t.fn()
            ran = True
