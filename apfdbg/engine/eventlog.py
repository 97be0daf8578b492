"""The run's event log: every event in order, indexed by kind and vCPU, readable from another thread."""
from __future__ import annotations

import bisect
import gc
from array import array
from dataclasses import dataclass
from typing import Iterable

from ..events import event_key


class EventLog:
    """Every event of the run, in order, addressable by sequence number (0 = the first event).

    The oldest are dropped past `capacity` (counts stay exact).  Events live in chunks that are
    only ever appended to, and `(key, vcpu)` index arrays hold the sequence numbers of each kind,
    so another thread can read any event below a length it was handed (an :class:`EventWindow`
    in a snapshot) and filter a million events without copying them.
    """

    CHUNK = 4096
    FREEZE_EVERY = 65536

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = max(capacity, self.CHUNK)
        self._chunks: dict[int, list] = {}
        self._tail: list = []
        self._chunks[0] = self._tail
        self.total = 0
        self.first = 0                       # sequence number of the oldest event kept
        self.counts: dict[tuple[str, int | None], int] = {}
        self.index: dict[tuple[str, int | None], array] = {}

    def __call__(self, e) -> None:
        seq = self.total
        tail = self._tail
        if len(tail) == self.CHUNK:
            tail = self._tail = []
            self._chunks[seq // self.CHUNK] = tail
        tail.append(e)
        self.total = seq + 1
        key = (e.kind, e.vcpu)
        self.counts[key] = self.counts.get(key, 0) + 1
        ikey = (event_key(e), e.vcpu) if e.kind == "inject" else key
        idx = self.index.get(ikey)
        if idx is None:
            idx = self.index[ikey] = array("q")
        idx.append(seq)
        if seq + 1 - self.first > self.capacity + self.CHUNK:
            self._drop_oldest_chunk()
        if not (seq + 1) % self.FREEZE_EVERY:
            # The log holds up to a million immutable events: move them out of the garbage collector's
            # sight, so full collections (which stop every thread) do not rescan them again and again.
            gc.freeze()

    def _drop_oldest_chunk(self) -> None:
        c = self.first // self.CHUNK
        self._chunks.pop(c, None)
        self.first = (c + 1) * self.CHUNK
        if c % 16 == 15:  # now and then, forget index entries of dropped events
            for k, idx in list(self.index.items()):
                cut = bisect.bisect_left(idx, self.first)
                if cut:
                    self.index[k] = idx[cut:]

    def get(self, seq: int):
        """The event with sequence number `seq`, or None if it was dropped (or is not there yet)."""
        chunk = self._chunks.get(seq // self.CHUNK)
        if chunk is None:
            return None
        i = seq % self.CHUNK
        return chunk[i] if i < len(chunk) else None

    def count(self, kind: str, vcpu: int | None = None) -> int:
        if vcpu is None:
            return sum(n for (k, _v), n in self.counts.items() if k == kind)
        return self.counts.get((kind, vcpu), 0)

    def tail(self, n: int) -> list:
        start = max(self.first, self.total - n)
        return [self.get(i) for i in range(start, self.total)]

    @property
    def events(self) -> list:
        """All kept events (a copy)."""
        return self.tail(self.total)

    def window(self) -> "EventWindow":
        return EventWindow(self, self.first, self.total)


@dataclass(frozen=True)
class EventWindow:
    """The event log as it was when a snapshot was taken: sequence numbers [start, end)."""
    log: EventLog
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start

    def get(self, seq: int):
        if not self.start <= seq < self.end:
            return None
        return self.log.get(seq)

    def keys(self) -> dict[str, int]:
        """Event keys (see event_key) seen so far, with their counts over the whole run."""
        out: dict[str, int] = {}
        for (k, _v), idx in list(self.log.index.items()):
            out[k] = out.get(k, 0) + len(idx)
        return out

    def select(self, keys: Iterable[str] | None = None, vcpus: Iterable[int | None] | None = None,
               since: int | None = None) -> list[int]:
        """Sequence numbers (ascending) of the events whose key is in `keys` and vCPU in `vcpus`
        (None: any), from `since` (default: the window's start) to the window's end."""
        lo = self.start if since is None else max(self.start, since)
        keys = None if keys is None else set(keys)
        vcpus = None if vcpus is None else set(vcpus)
        parts = []
        for (k, v), idx in list(self.log.index.items()):
            if (keys is None or k in keys) and (vcpus is None or v in vcpus):
                a = bisect.bisect_left(idx, lo)
                b = bisect.bisect_left(idx, self.end)
                if b > a:
                    parts.append(idx[a:b])
        if not parts:
            return []
        if len(parts) == 1:
            return parts[0].tolist()
        out: list[int] = []
        for p in parts:
            out.extend(p)
        out.sort()  # timsort merges the sorted runs
        return out

