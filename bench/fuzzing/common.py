"""What every fuzz target shares: seeded inputs, the report of what went wrong, the watchdog, the
trace check and byte mutators.

Input `i` of a target comes from its own generator, seeded by (seed, target, i), so any failure is
replayed from its index alone, whatever the worker split (`fuzz.py --replay TARGET:I`).
"""
from __future__ import annotations

import io
import random
import re
import signal
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python bench/fuzz.py` from anywhere, even without the install
    sys.path.insert(0, str(ROOT))
GUESTS = ROOT / "guests"


def input_rng(seed: int, target: str, i: int) -> random.Random:
    return random.Random(f"{seed}/{target}/{i}")


class Hang(BaseException):
    """The watchdog fired: the input made no progress within its bound (a BaseException, so no
    `except Exception` in the code under test swallows it)."""


class TooSlow(BaseException):
    """The input kept making progress but reached its wall-time budget: an outcome, not a hang
    (a guest whose every instruction exits to Python is slow, not stuck)."""


class Progress:
    """What the watchdog looks at: the machine of the input running now (its virtual time and its
    event count grow while it works)."""
    machine = None

    @classmethod
    def value(cls) -> int | None:
        m = cls.machine
        if m is None:
            return None
        return m.now + sum(m.counts.values())


STALL = 5.0   # seconds without progress that make a hang


@contextmanager
def watchdog(seconds: float, stall: float = STALL):
    """In this (main) thread: raise Hang when the input shows no progress for `stall` seconds (or,
    with no machine to watch, after `seconds`), TooSlow after `seconds` with progress. Python code
    is interrupted at once; code stuck in C is caught by the parent's backstop (fuzz.py kills the
    worker)."""
    import time
    start = last_change = time.monotonic()
    last = [None]
    Progress.machine = None

    def fire(_sig, _frame):
        nonlocal last_change
        now = time.monotonic()
        v = Progress.value()
        if v is not None and v != last[0]:
            last[0], last_change = v, now
        if v is not None and now - last_change >= stall:
            raise Hang(f"no progress within {stall:g} s (virtual time {Progress.machine.now:,})")
        if now - start >= seconds:
            if v is None:
                raise Hang(f"not done within {seconds:g} s")
            raise TooSlow(f"still working after {seconds:g} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        Progress.machine = None


@dataclass
class Failure:
    target: str
    index: int
    kind: str      # traceback, hang, lost
    what: str      # the input, in a few words
    text: str      # the traceback, or what was lost

    def line(self) -> str:
        return f"{self.target}:{self.index} {self.kind}: {self.what}"


@dataclass
class Tally:
    """What one target (or one slice of it) saw."""
    target: str
    inputs: int = 0
    tracebacks: int = 0
    hangs: int = 0
    lost: int = 0
    seconds: float = 0.0
    notes: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def add(self, other: "Tally") -> None:
        self.inputs += other.inputs
        self.tracebacks += other.tracebacks
        self.hangs += other.hangs
        self.lost += other.lost
        self.seconds += other.seconds
        for k, v in other.notes.items():
            self.notes[k] = self.notes.get(k, 0) + v
        self.failures += other.failures

    @property
    def ok(self) -> bool:
        return self.tracebacks == 0 and self.hangs == 0 and self.lost == 0


class Report:
    """Targets say here what each input did. This one keeps a Tally (in-process runs, tests);
    fuzz.py's worker sends the same calls to the parent process."""
    KEEP = 20   # failures kept per target (the counts go on)

    def __init__(self, target: str) -> None:
        self.tally = Tally(target)
        self.current: int | None = None

    def begin(self, i: int, bound: float) -> None:
        """Input `i` starts; it must be done within `bound` seconds (the parent's backstop)."""
        self.current = i
        self.tally.inputs += 1

    def note(self, key: str) -> None:
        self.tally.notes[key] = self.tally.notes.get(key, 0) + 1

    def fail(self, kind: str, i: int, what: str, text: str, count: int = 1) -> None:
        t = self.tally
        if kind == "traceback":
            t.tracebacks += count
        elif kind == "hang":
            t.hangs += count
        else:
            t.lost += count
        if len(t.failures) < self.KEEP:
            t.failures.append(Failure(t.target, i, kind, what, text))

    def exception(self, i: int, what: str, exc: BaseException) -> None:
        """An exception escaped the code under test: a hang if the watchdog raised it."""
        text = "".join(traceback.format_exception(exc))
        self.fail("hang" if isinstance(exc, Hang) else "traceback", i, what, text)


# ---- traces --------------------------------------------------------------------------------------
_TEXT_LINE = re.compile(r"^ *\d+ +(-|\d+)  [a-z_]+: ")


class TraceCheck:
    """A trace of a run written to memory by apfdbg's own TraceWriter (as `--trace` does), and the
    count of lines lost: events the machine published but no line says, and lines that do not parse."""

    def __init__(self, machine, fmt: str = "jsonl") -> None:
        from apfdbg.trace import TraceWriter
        self.m, self.fmt = machine, fmt
        self.stream = io.StringIO()
        self.base = sum(machine.counts.values())
        machine.sinks.insert(0, TraceWriter(self.stream, fmt))  # first, as the CLI puts it

    def lost(self) -> tuple[int, str]:
        from apfdbg.events import parse_line
        emitted = sum(self.m.counts.values()) - self.base
        lines = self.stream.getvalue().splitlines()
        bad, first = 0, ""
        for line in lines:
            try:
                if self.fmt == "jsonl":
                    parse_line(line)
                elif not _TEXT_LINE.match(line):
                    raise ValueError("not a trace line")
            except ValueError as e:  # pydantic's ValidationError is a ValueError
                bad += 1
                first = first or f"{line[:200]!r}: {str(e)[:300]}"
        missing = abs(emitted - len(lines))
        text = f"{emitted} events, {len(lines)} lines, {bad} unparsable" + (f"; first: {first}" if first else "")
        return missing + bad, text


# ---- mutators --------------------------------------------------------------------------------------
INTERESTING_U64 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x1000, 0xFFF, 0x100000, 0xFFFFF, 0x7FFFFFFF,
                   0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 47, (1 << 47) - 1, 0xFFFF800000000000,
                   (1 << 63) - 1, 1 << 63, (1 << 64) - 1)


def interesting(rng: random.Random, bits: int = 64) -> int:
    v = rng.choice(INTERESTING_U64) if rng.random() < 0.7 else rng.getrandbits(bits)
    if rng.random() < 0.2:
        v += rng.choice((-1, 1))
    return v & ((1 << bits) - 1)


def mutate_bytes(rng: random.Random, data: bytearray, n: int, lo: int = 0, hi: int | None = None,
                 extras: tuple[bytes, ...] = ()) -> list[str]:
    """Apply `n` random mutations within data[lo:hi] in place; returns what was done, in words."""
    hi = len(data) if hi is None else hi
    done = []
    if hi <= lo:
        return done
    for _ in range(n):
        at = rng.randrange(lo, hi)
        room = hi - at
        op = rng.randrange(7 if extras else 6)
        if op == 0:
            data[at] ^= 1 << rng.randrange(8)
            done.append(f"flip@{at:#x}")
        elif op == 1:
            data[at] = rng.randrange(256)
            done.append(f"byte@{at:#x}")
        elif op == 2:
            k = min(rng.randint(1, 32), room)
            data[at:at + k] = rng.randbytes(k)
            done.append(f"rand{k}@{at:#x}")
        elif op == 3:
            src = rng.randrange(lo, hi)
            k = min(rng.randint(1, 64), room, hi - src)
            data[at:at + k] = data[src:src + k]
            done.append(f"copy{k}@{at:#x}")
        elif op == 4:
            k = min(rng.randint(1, 16), room)
            data[at:at + k] = bytes(k)
            done.append(f"zero{k}@{at:#x}")
        elif op == 5:
            w = rng.choice((1, 2, 4, 8))
            v = interesting(rng, 8 * w).to_bytes(w, "little")[:room]
            data[at:at + len(v)] = v
            done.append(f"int{w}@{at:#x}")
        else:
            x = rng.choice(extras)[:room]
            data[at:at + len(x)] = x
            done.append(f"insn {x.hex()}@{at:#x}")
    return done
