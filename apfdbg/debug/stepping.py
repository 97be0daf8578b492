"""Stepping commands on one vCPU: over, out, source line into / over, run to an address.

Each is a generator the engine runs in slices: it yields whenever the machine paused for the UI
(so a long step-over stays interruptible and the panels stay live) and returns a sentence saying
where it stopped. They are built from two exact primitives only, `VCpu.step()` (one instruction)
and a temporary breakpoint with a predicate, so a step is as deterministic as a free run and a
recorded run could later be replayed to any of these stops (stepping backwards needs nothing else).

`lock=True` freezes the other vCPUs while the command runs (gdb's scheduler-locking); with
`lock=False` the machine runs as usual and only the stepped vCPU's stop counts.
"""
from __future__ import annotations

from typing import Callable, Iterator

from unicorn import x86_const as X

from .debuginfo import LineTable

CALLS = ("call", "lcall")
SOFT_INTS = ("int", "int3", "into", "int1", "syscall", "sysenter")
RETURNS = ("ret", "retf", "retq", "iretq", "iret", "iretd", "sysret", "sysretq", "sysexit", "lret")
MAX_STEPS = 2_000_000        # instruction steps one command takes before giving up
YIELD_EVERY = 256            # single steps between looks at the UI

_cs = None


def insn_at(v) -> tuple[int, str, str] | None:
    """(size, mnemonic, operands) of the instruction at the vCPU's RIP, or None if unreadable."""
    global _cs
    if _cs is None:
        import capstone
        _cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    rip = v.rip
    code = v.peek(rip, 15)
    if code is None:
        code = b"".join(b for b in (v.peek(rip + i, 1) for i in range(15)) if b is not None)
    for _addr, size, mnem, ops in _cs.disasm_lite(code, rip, 1):
        return size, mnem, ops
    return None


def kind_of(mnem: str) -> str:
    if mnem.startswith(CALLS):
        return "call"
    if mnem in SOFT_INTS:
        return "int"
    if mnem in RETURNS:
        return "return"
    return "plain"


class StepError(Exception):
    """The command cannot go on: the message says why (it becomes the stop reason)."""


class Stepper:
    def __init__(self, machine, vcpu: int, *, lock: bool, describe: Callable[[int], str],
                 lines: LineTable | None = None, limit: Callable[[], int | None] = lambda: None) -> None:
        self.m = machine
        self.v = machine.vcpus[vcpu]
        self.dbg = machine.debugger
        self.lock = lock
        self.describe = describe
        self.lines = lines
        self.limit = limit          # virtual time to stop at (synchronous runs), None: no limit
        self.steps = 0
        self.events = 0             # events delivered and run through meanwhile

    # --- primitives ---------------------------------------------------------------------------
    def _run(self) -> Iterator[None]:
        """Run (the vCPU alone, or the machine) until a debug stop, the exit, or the time limit."""
        m = self.m
        while True:
            m.pause_requested = False
            until = self.limit()
            if self.lock:
                r = m.run_alone(self.v, until)
                if r == "blocked" and m.debug_stop is None:
                    raise StepError(f"vCPU {self.v.index} is {self.v.state.value} and nothing can wake it "
                                    "while the other vCPUs are frozen (k unfreezes them)")
            else:
                m.step(until=until)
            if m.debug_stop is not None or m.exit_requested:
                return
            if until is not None and m.now >= until:
                raise StepError(f"no stop within the synchronous limit (time {m.now:,})")
            yield

    def run_to(self, addr: int, check: Callable | None = None, label: str = "") -> Iterator[None]:
        """Run until this vCPU reaches `addr` (with `check` true there); other stops end the command
        (their reason is reported by the engine)."""
        bp = self.dbg.add_breakpoint(addr, self.v.index, check=check, temporary=True, label=label)
        self.v._bp_skip = self.v.rip  # leaving the current instruction never counts as arriving
        try:
            yield from self._run()
            st = self.m.debug_stop
            if st is not None and st.id == bp.id:
                self.m.debug_stop = None
                return
            raise Interrupted
        finally:
            self.dbg.remove(bp.id)

    def _same_frame(self) -> Callable:
        """A predicate: this vCPU is back on the stack frame (and address space) it has now."""
        v = self.v
        rsp, cr3 = v.reg(X.UC_X86_REG_RSP), v.reg(X.UC_X86_REG_CR3)
        return lambda cpu: cpu.reg(X.UC_X86_REG_RSP) == rsp and cpu.reg(X.UC_X86_REG_CR3) == cr3

    def _wait_runnable(self) -> Iterator[None]:
        """The vCPU is halted or stalled: run until it can execute again."""
        v, m = self.v, self.m
        while not m.exit_requested and not v.wants_to_run():
            m.pause_requested = False
            now = m.now
            if self.lock:
                r = m.run_alone(v, self.limit(), until_runnable=True)
                if r == "blocked":
                    raise StepError(f"vCPU {v.index} is {v.state.value} and nothing can wake it while the "
                                    "other vCPUs are frozen (k unfreezes them)")
            else:
                m.step(until=now + 1000)
            if m.debug_stop is not None:
                raise Interrupted
            yield

    def one(self, over_events: bool) -> Iterator[None]:
        """Exactly one instruction of this vCPU. An event delivered first is run through (to the
        return to this very instruction, then the instruction runs) when `over_events`; else the
        step stops at the handler and `self.took_event` says so."""
        v, m = self.v, self.m
        self.took_event = False
        for _ in range(16):
            rip = v.rip
            back = self._same_frame()
            what = v.step()
            self.steps += 1
            if m.debug_stop is not None and m.debug_stop.reason != "step":
                raise Interrupted
            if what == "instruction":
                return
            if what == "exited":
                return
            if what == "event":
                self.events += 1
                if not over_events:
                    self.took_event = True
                    return
                yield from self.run_to(rip, back, "return from the event")
                continue
            yield from self._wait_runnable()
        raise StepError(f"vCPU {v.index}: events kept arriving before the instruction at {self.describe(v.rip)}")

    def over_call(self, size: int) -> Iterator[None]:
        """Run the call or software interrupt at RIP through to the instruction after it."""
        v = self.v
        yield from self.run_to(v.rip + size, self._same_frame(), "step over")

    # --- commands ---------------------------------------------------------------------------------
    def into(self) -> Iterator[None]:
        """One instruction, once this vCPU can run (a halted one waits for its interrupt)."""
        v = self.v
        start = v.rip
        yield from self.one(over_events=False)
        if self.took_event:
            return f"took an event: stopped at its handler, {self.describe(v.rip)}"
        return f"stepped 1 instruction: {self.describe(start)} -> {self.describe(v.rip)}"

    def over(self) -> Iterator[None]:
        v = self.v
        start = v.rip
        insn = insn_at(v)
        if insn is None:
            raise StepError(f"cannot read the instruction at {self.describe(start)}")
        if kind_of(insn[1]) in ("call", "int"):
            yield from self.over_call(insn[0])
            return f"stepped over {insn[1]} {insn[2]}".strip() + f": {self.describe(v.rip)}"
        yield from self.one(over_events=True)
        return f"stepped: {self.describe(start)} -> {self.describe(v.rip)}{self._events_note()}"

    def out(self) -> Iterator[None]:
        """Until the current function returns or the current handler irets (the ret/iretq runs)."""
        v = self.v
        start = v.rip
        while True:
            insn = insn_at(v)
            if insn is None:
                raise StepError(f"cannot read the instruction at {self.describe(v.rip)}")
            k = kind_of(insn[1])
            if k == "return":
                yield from self.one(over_events=True)
                return (f"returned from {self.describe(start)} by {insn[1]} to {self.describe(v.rip)}"
                        f"{self._events_note()}")
            if k in ("call", "int"):
                yield from self.over_call(insn[0])
            else:
                yield from self.one(over_events=True)
            yield from self._tick()

    def line(self, over: bool) -> Iterator[None]:
        """Until RIP reaches the start of another source line (calls and events entered, or run
        through with `over`); code without line info entered by a call is stepped out of."""
        v, lt = self.v, self.lines
        start = v.rip
        if not lt or lt.where(start) is None:
            raise StepError(f"no source line info at {self.describe(start)}: step by instruction (s, S)")
        loc = lt.where(start)
        while True:
            insn = insn_at(v)
            if insn is None:
                raise StepError(f"cannot read the instruction at {self.describe(v.rip)}")
            k = kind_of(insn[1])
            if over and k in ("call", "int"):
                yield from self.over_call(insn[0])
            else:
                yield from self.one(over_events=over)
                if self.took_event:
                    return f"took an event: stopped at its handler, {self.describe(v.rip)}"
                now = lt.where(v.rip)
                if now is None and k == "call":
                    yield from self.out()      # into code without line info: back out of it
                elif now is None and k in ("return", "int"):
                    return f"left the source: {self.describe(v.rip)}"
            here = lt.where(v.rip)
            if here is not None and here != loc and lt.is_line_start(v.rip):
                f, n = here
                return f"{f.rsplit('/', 1)[-1]}:{n} ({self.describe(v.rip)}){self._events_note()}"
            yield from self._tick()

    def to(self, addr: int) -> Iterator[None]:
        yield from self.run_to(addr, None, "run to cursor")
        return f"reached {self.describe(addr)}"

    # --- helpers ---------------------------------------------------------------------------------
    def _tick(self) -> Iterator[None]:
        if self.steps > MAX_STEPS:
            raise StepError(f"gave up after {MAX_STEPS:,} single steps, at {self.describe(self.v.rip)}")
        if self.steps % YIELD_EVERY == 0:
            yield

    def _events_note(self) -> str:
        if not self.events:
            return ""
        return f" ({self.events} event{'s' if self.events != 1 else ''} handled on the way)"


class Interrupted(Exception):
    """Another stop (a user breakpoint, watchpoint, catchpoint, the exit) ended the command."""
