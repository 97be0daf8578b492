"""The engine: one machine with its KVM host, driven by a scenario, headless or from a UI.

Headless and TUI runs go through this same class. The UI never touches the machine: it sends
commands (run on the engine thread between vCPU turns) and reads immutable snapshots.
"""
from __future__ import annotations

import bisect
import gc
import queue
import threading
import time
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .host.kvm import build_machine
from .machine.image import Image
from .machine.machine import Machine, RunResult
from .machine.vcpu import RFLAGS_IF
from .events import event_key
from .scenario import ScenarioError, Action, EventMatch, Scenario, parse_gfns


@dataclass(frozen=True)
class VcpuView:
    index: int
    state: str
    rip: int
    where: str
    cpl: int
    interrupts: bool
    cr2: int
    retired: int
    pending: str
    stall_gfn: int | None
    task: str | None


@dataclass(frozen=True)
class Snapshot:
    """Everything a UI shows, copied at one instant of virtual time."""
    time: int
    running: bool
    exited: bool
    exit_status: int
    exit_reason: str
    vcpus: list[VcpuView]
    apf: list[Any]                 # apfdbg.kvm.apf.VcpuApfSnapshot per vCPU
    reason_areas: list[bytes | None]
    swapped: list[int]
    in_flight: list[int]
    event_count: int
    counts: dict[str, int]
    console: list[str]
    # --- for the UI (all immutable or never mutated after the snapshot is taken) ---
    events: "EventWindow | None" = None   # the event log as it was at `time`
    stop_reason: str = ""                 # why the engine is paused ("" while running)
    speed: float | None = None            # paced events per second (None: full speed)
    commands: int = 0                     # commands applied so far (UI and scenario-independent)
    message: str = ""                     # what the last command did, in words
    frames: int = 0                       # guest RAM frames
    profile: Any = None                   # apfdbg.kvm.profiles.Profile (frozen)
    error: str | None = None              # the engine stopped with this error
    stop_event: int | None = None         # sequence number of the event the run stopped at
    code: tuple = ()                      # per vCPU: CodeView (bytes around RIP) or None
    regs: tuple = ()                      # per vCPU: dict register name -> value
    breakpoints: tuple = ()               # BreakpointView of every breakpoint, by address
    points: tuple = ()                    # PointView of every breakpoint, watchpoint, catchpoint, by id
    memory: tuple = ()                    # per vCPU: MemView (the memory panel's expression there)
    stack: tuple = ()                     # per vCPU: StackView or None
    lock: bool = True                     # stepping freezes the other vCPUs (scheduler-locking)
    stepping: str = ""                    # the stepping command in progress ("" when none)


@dataclass(frozen=True)
class CodeView:
    """Guest code read through a vCPU's page tables: `data` starts at `start` (a symbol's start when
    RIP is near one, so disassembly finds instruction boundaries; else RIP)."""
    start: int
    rip: int
    data: bytes


@dataclass(frozen=True)
class BreakpointView:
    id: int
    addr: int
    vcpu: int | None
    condition: str | None
    hits: int


@dataclass(frozen=True)
class PointView:
    id: int
    kind: str                # "break", "watch", "catch"
    label: str               # pf_handler, trap.c:107, write apf_reason_area [4], apf not-present
    addr: int | None
    vcpu: int | None         # None: every vCPU
    condition: str | None
    hits: int


@dataclass(frozen=True)
class MemView:
    """`rows` of 16 bytes from `addr` (None: that row is not mapped), read through the vCPU's page
    tables, or guest-physical when `physical`."""
    expr: str
    addr: int | None
    rows: tuple
    physical: bool = False
    error: str = ""


@dataclass(frozen=True)
class FrameView:
    """The interrupt frame of the innermost event being handled (from the delivery that pushed it)."""
    vector: int
    name: str
    at: int                  # address of the frame's first word (the error code when there is one)
    error_code: int | None
    rip: int
    cs: int
    rflags: int
    rsp: int
    ss: int
    handler: int


@dataclass(frozen=True)
class StackView:
    rsp: int
    words: tuple             # qwords from RSP up (None: not mapped)
    frame: FrameView | None


#: registers the Registers panel shows (names as in apfdbg.machine.debug.REGS, plus efer)
SNAP_REGS = ("rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags "
             "cr0 cr2 cr3 cr4 cs ss ds es fs gs fs_base gs_base").split()
MEM_ROWS = 16          # the memory panel's rows of 16 bytes
STACK_WORDS = 32       # qwords of stack from RSP
#: registers the TUI may edit (the others would need the machine to re-derive state it caches)
EDITABLE_REGS = frozenset(("rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags cr2 "
                           "fs_base gs_base").split())
STEP_MODES = ("into", "over", "out", "line", "line_over")
CODE_BEFORE = 192      # at most this many bytes of code before RIP (from the symbol's start)
CODE_AFTER = 96


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


@dataclass
class ExpectResult:
    description: str
    observed: int
    ok: bool


class Engine:
    def __init__(self, image: Image, scenario: Scenario | None = None) -> None:
        self.scenario = scenario or Scenario()
        sc = self.scenario
        self.image = image
        self.machine: Machine = build_machine(
            image, sc.machine, profile=sc.host.profile, seed=sc.host.seed,
            latency=sc.pager.latency, auto_pager=sc.pager.auto.config() if sc.pager.auto else None)
        self.kvm = self.machine.host.kvm
        from .machine.debug import Debugger
        #: breakpoints and watchpoints (the TUI's b key); a stop sets machine.debug_stop
        self.debugger: Debugger = self.machine.debugger or Debugger(self.machine)
        for poke in sc.poke:
            self._poke(poke)
        self.log = EventLog()
        self.machine.sinks.append(self.log)
        self.machine.sinks.append(self._on_event)
        #: frames the scenario's pager may swap out (the memory map marks them; random page-outs
        #: pick from them)
        self.pager_frames: tuple[int, ...] = tuple(
            g for g in sorted(set(parse_gfns(sc.pager.auto.frames))) if g < self.machine.ram.frames
        ) if sc.pager.auto else ()
        self._expect_counts: dict[int, int] = {}
        n = len(self.machine.vcpus)
        for i, action in enumerate(sc.actions):
            if action.vcpu is not None and not 0 <= action.vcpu < n:  # known only now (--vcpus)
                raise ScenarioError(f"actions[{i}].vcpu: there is no vCPU {action.vcpu}: the machine has "
                                    f"{n} (0-{n - 1})")
            self._schedule(action, action.at)
        for i, ex in enumerate(sc.expect):
            if ex.by is not None:
                self.machine.timeline.schedule(ex.by, lambda i=i, ex=ex: self._expect_counts.__setitem__(
                    i, self.log.count(ex.event, ex.vcpu)))
        # threaded driving (UI)
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._quit = False
        self.events_per_second: float | None = None  # None: full speed
        self._step_events = 0
        self._break: Callable[[Any], bool] | None = None
        self._break_note = ""
        self._stepping = False
        self._pace_armed = True
        self.stop_reason = "paused"
        self.stop_event: int | None = None     # sequence number of the event a run stopped at
        self.message = ""
        self.commands_done = 0
        self._last_fault_gfn: dict[int, int] = {}
        self._last_area: dict[int, int] = {}  # reason area of each vCPU (kept after a disable)
        self._info_cache: dict = {}
        self._snapshot: Snapshot | None = None
        self._snapshot_key: tuple | None = None
        self._lock = threading.Lock()
        self.error: str | None = None
        self.lock = sc.debug.lock              # stepping freezes the other vCPUs
        self._sync_limit: int | None = None
        self._task_vcpu = 0
        self._in_step = False
        self.mem_expr = sc.debug.memory        # what the memory panel shows
        self._mem_compiled: tuple | None = None  # (text, physical, compiled expression)
        self._mem_cpu = None                   # the vCPU the expression is being evaluated for
        self._task = None                      # a stepping command in progress (generator)
        self._task_note = ""
        self._frames: dict[int, list] = {}     # per vCPU: recent deliveries (for the stack panel)
        #: another thread owns the machine (the gdb stub): it calls service() between its slices
        self.external = False
        self._last_service = 0.0
        self._initial_points(sc.debug.points)

    def _poke(self, poke) -> None:
        addr = poke.at
        if isinstance(addr, str):
            sym = self.image.symbol(addr)
            if sym is None:
                raise ScenarioError(f"poke: the image has no symbol {addr!r}")
            addr = sym.addr
        data = poke.data()
        if not self.machine.ram.contains(addr, len(data)):
            raise ScenarioError(f"poke: {addr:#x}+{len(data)} is outside guest RAM")
        self.machine.ram.write(addr, data)

    # --- commands (same effect from a scenario, the UI, or a test) -----------------------------
    def _schedule(self, action: Action, at: int) -> None:
        def fire() -> None:
            self.apply(action)
            if action.every:  # on a fixed grid (at, at + every, ...): no drift from late firing
                self._schedule(action, at + action.every)
        self.machine.timeline.schedule(at, fire)

    def apply(self, a: Action) -> str:
        """Carry out one action now (engine thread); returns what it did, in words."""
        m = self.machine
        if a.do == "page_out":
            done = m.page_out(parse_gfns(a.gfns))
            return f"paged out {_gfns_text(done)}" if done else f"{_gfns_text(parse_gfns(a.gfns))} already out"
        elif a.do == "page_out_working":
            gfn = self.working_gfn(a.vcpu)
            if gfn is None:
                return f"vCPU {a.vcpu}: no working page (no memory operand at RIP, no fault yet)"
            done = m.page_out([gfn])
            return (f"paged out gfn {gfn:#x}, vCPU {a.vcpu}'s working page" if done
                    else f"gfn {gfn:#x} (vCPU {a.vcpu}'s working page) is already out")
        elif a.do == "page_in":
            gfns = parse_gfns(a.gfns)
            for g in gfns:
                m.page_in(g)
            return f"paged in {_gfns_text(gfns)}"
        elif a.do == "page_out_random":
            pool = parse_gfns(a.gfns) if a.gfns is not None else range(0x100, m.ram.frames)
            resident = [g for g in pool if g < m.ram.frames and not m.ram.is_swapped(g)]
            done = m.page_out(sorted(m.rng.sample(resident, min(a.count, len(resident)))))
            return f"paged out {len(done)} random frame(s): {_gfns_text(done)}"
        elif a.do == "complete":
            work = self.kvm.find_work(a.token, a.vcpu)
            if work is None:
                return f"no outstanding work with token {a.token:#x}"
            if self.kvm.complete(work):
                return f"completed work #{work.serial} (token {work.token:#x})"
            return f"work #{work.serial} is not paging in (it is {work.state.value})"
        elif a.do == "complete_oldest":
            w = self.kvm.complete_oldest(a.vcpu)
            return (f"completed work #{w.serial} (token {w.token:#x}), the oldest of vCPU {a.vcpu}" if w
                    else f"vCPU {a.vcpu} has no work paging in")
        elif a.do == "complete_all":
            flying = lambda: sum(len(self.kvm.state(i).in_flight) for i in self.kvm.vcpus)  # noqa: E731
            before = flying()
            self.kvm.complete_all(a.vcpu)
            where = f" of vCPU {a.vcpu}" if a.vcpu is not None else ""
            return f"completed {before - flying()} work(s){where}"
        elif a.do == "wake_all":
            w = self.kvm.wake_all(a.vcpu)
            return (f"queued wake-all work #{w.serial} on vCPU {a.vcpu}" if w else
                    f"vCPU {a.vcpu}: done list not empty, no wake-all queued (kvm_async_pf_wakeup_all)")
        elif a.do == "reset_vcpu":
            self.kvm.reset_vcpu(a.vcpu)
            return f"reset vCPU {a.vcpu}'s async-PF state"
        return ""

    def command(self, action: Action | Callable[[], None]) -> None:
        """Queue a command for the engine thread (or run it now when no thread drives the engine)."""
        if callable(action) and not isinstance(action, Action):
            fn = action
        else:
            def fn(action=action) -> None:
                self.message = self.apply(action)
        def counted() -> None:
            fn()
            self.commands_done += 1
        if self._thread is None and not self.external:
            counted()
        else:
            self._commands.put(counted)
            if not self.external:   # the gdb stub services commands between its own slices
                self._request_pause()

    def _request_pause(self) -> None:
        """Have the machine return to the engine loop soon (mid-turn if need be; the turn resumes)."""
        m = self.machine
        rp = getattr(m, "request_pause", None)
        if rp is not None:
            rp()
        else:
            m.pause_requested = True

    def working_gfn(self, vcpu: int) -> int | None:
        """The page `vcpu` works on: the first data page its next instructions touch (up to 16
        instructions on from RIP, with the registers as they are now), else the page of its last
        swapped-frame fault (engine thread)."""
        from .machine.faultaddr import candidates
        from .machine.faults import AccessFault, HostSwapped
        v = self.machine.vcpus[vcpu]
        reg = getattr(v, "reg", None) or v.uc.reg_read
        try:
            import capstone
            rip = v.rip
            code = v.peek(rip, 96) or v.peek(rip, 16) or b""
            cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
            for n, (addr, _size, mnem, ops) in enumerate(cs.disasm_lite(code, rip)):
                if n >= 16:
                    break
                if "sp" in ops or mnem.startswith(("push", "pop", "call", "ret", "iret", "lea", "nop")):
                    continue  # the stack is everyone's working page; look for data
                for va, _sz in candidates(reg, code[addr - rip:], addr):
                    try:
                        return v.accel.translate(va, "read", False, False) >> 12
                    except HostSwapped as e:
                        return e.gfn
                    except AccessFault:
                        continue
        except Exception:  # an instruction the decoder does not know: fall back
            pass
        return self._last_fault_gfn.get(vcpu)

    # --- run control (UI) -------------------------------------------------------------------
    def pause(self, reason: str = "paused") -> None:
        self._break = None
        self._step_events = 0
        if self._running.is_set():
            self.stop_reason = reason
            self.stop_event = None
        self._running.clear()
        self._request_pause()

    def resume(self) -> None:
        self._break = None
        self._step_events = 0
        self.stop_reason = ""
        self._running.set()

    def set_speed(self, events_per_second: float | None) -> None:
        """Pace the run: at most this many APF-related events per second (None: full speed)."""
        self.events_per_second = events_per_second

    def step_events(self, n: int = 1) -> None:
        """Run until `n` more events have happened, then pause."""
        def go() -> None:
            self._break = None
            self._step_events = n
            self.stop_reason = ""
            self._running.set()
        self.command(go)
        self._drive_sync()

    def run_until(self, match: EventMatch | Callable[[Any], bool], note: str = "") -> None:
        """Run until an event matches (an EventMatch or a predicate on the event), then pause."""
        pred = match.matches if isinstance(match, EventMatch) else match
        def go() -> None:
            self._step_events = 0
            self._break = pred
            self._break_note = note or (f"reached {match.describe()}" if isinstance(match, EventMatch)
                                        else "reached the event")
            self.stop_reason = ""
            self._running.set()
        self.command(go)
        self._drive_sync()

    def step_instruction(self, vcpu: int) -> None:
        """Run `vcpu` alone for exactly one instruction (VCpu.step: or, if an event is due first, its
        delivery up to the handler's first instruction), then pause.  Timers due meanwhile fire on
        the next run."""
        def go() -> None:
            m = self.machine
            v = m.vcpus[vcpu]
            self._break = None
            self._step_events = 0
            self._running.clear()
            before, rip = v.retired, v.rip
            m.pause_requested = False
            self._stepping = True
            try:
                if hasattr(v, "step"):
                    what = v.step()
                else:  # an older machine: its time runs per basic block
                    what = "instruction" if not m.exit_requested and v.run(v.retired + 1) else "blocked"
            finally:
                self._stepping = False
            hit = m.debug_stop         # a watchpoint or catchpoint the step set off
            m.debug_stop = None        # a single step is a stop of its own
            n = v.retired - before
            if what in ("idle", "blocked") and n == 0 and v.rip == rip and hit is None:
                self._begin_task(vcpu, "into", None)   # halted or stalled: wait until it runs
                return
            where = f"{self.image.describe(rip)} -> {self.image.describe(v.rip)}"
            if what == "event":
                why = f"vCPU {vcpu} took an event: {where}"
            elif n == 0 and v.rip == rip:
                why = f"vCPU {vcpu} is {v.state.value}: nothing ran ({what})"
            else:
                why = f"vCPU {vcpu} stepped {n} instruction{'s' if n != 1 else ''}: {where}"
            if hit is not None and hit.reason != "step":
                why += f"; {self._describe_stop(hit)}"
            self.stop_reason = why
            self.message = why
            self.stop_event = None
            self._request_pause()
        self.command(go)
        self._drive_sync()

    # --- synchronous driving (tests, screenshots, no engine thread) ---------------------------
    SYNC_LIMIT = 20_000_000

    def run_to(self, time_: int) -> None:
        """Run the machine on this thread until virtual time `time_` (or the guest exits)."""
        m = self.machine
        while not m.exit_requested and m.now < time_:
            m.pause_requested = False
            m.step(until=time_)
        if m.exit_requested:
            m.finish()
            self._exited()

    def pump(self, max_insns: int | None = None) -> None:
        """Without an engine thread: run while the engine is set running (a step or a break clears
        that), at most `max_insns` instructions of virtual time (default SYNC_LIMIT)."""
        if self._thread is not None:
            return
        m = self.machine
        limit = m.now + (max_insns or self.SYNC_LIMIT)
        self._sync_limit = limit
        while self._running.is_set() and not m.exit_requested and m.now < limit:
            m.pause_requested = False
            if self._task is not None:
                self._advance_task()
            else:
                m.step(until=limit)
            if self._debug_stopped():
                break
        self._cancel_task()
        if m.exit_requested:
            m.finish()
            self._exited()
        elif self._running.is_set() and (self._break is not None or self._step_events or self._task):
            self._stop_run(f"nothing matched within {max_insns or self.SYNC_LIMIT:,} instructions")

    def _debug_stopped(self) -> bool:
        """A breakpoint or watchpoint stopped the machine: end the run, saying where."""
        m = self.machine
        st = getattr(m, "debug_stop", None)
        if st is None or m.exit_requested:
            return False          # a stop that ends the run is reported with the exit (_exited)
        m.debug_stop = None
        why = self._describe_stop(st)
        self._stop_run(why)
        self.message = why
        return True

    def _describe_stop(self, st) -> str:
        return self.debugger.describe_stop(st, self.image.describe)

    # --- breakpoints (commands: run them through command()) ---------------------------------------
    def toggle_breakpoint(self, addr: int) -> None:
        """Queue: remove the breakpoints at `addr`, or add one there on every vCPU."""
        def go() -> None:
            dbg = self.debugger
            ids = [bp.id for bp in dbg.breakpoints.values() if bp.addr == addr]
            for i in ids:
                dbg.remove(i)
            if ids:
                self.message = f"removed the breakpoint at {self.image.describe(addr)} ({addr:#x})"
            else:
                bp = dbg.add_breakpoint(addr)
                self.message = f"breakpoint {bp.id} at {self.image.describe(addr)} ({addr:#x}), every vCPU"
        self.command(go)

    def add_point(self, text: str, vcpu: int | None = None) -> None:
        """Queue: a breakpoint, watchpoint or catchpoint in the syntax of apfdbg.debug.points (`vcpu`: the
        default when the text names none). The message says what was set, or what is wrong."""
        def go() -> None:
            from .debug.points import PointError, parse_point
            try:
                spec = parse_point(text, self.image, len(self.machine.vcpus), vcpu)
            except PointError as e:
                self.message = f"not set: {e}"
                return
            self.message = self._set_point(spec)
        self.command(go)

    def _set_point(self, spec) -> str:
        from .debug.points import set_point
        return set_point(self.debugger, spec, self.image)

    def _initial_points(self, texts: list[str]) -> None:
        from .debug.points import PointError, parse_point
        for text in texts:
            try:
                self._set_point(parse_point(text, self.image, len(self.machine.vcpus)))
            except PointError as e:
                raise ScenarioError(f"debug.points: {e}") from None
        err = self._mem_check(self.mem_expr)
        if err:
            raise ScenarioError(f"debug.memory: {err}")

    def _symbol_value(self, name: str) -> int | None:
        sym = self.image.symbol(name)
        return sym.addr if sym is not None else None

    def remove_point(self, point_id: int) -> None:
        def go() -> None:
            ok = self.debugger.remove(point_id)
            self.message = f"deleted point {point_id}" if ok else f"no point {point_id}"
        self.command(go)

    def set_lock(self, frozen: bool) -> None:
        """Whether stepping commands freeze the other vCPUs (the default) or let them run."""
        def go() -> None:
            self.lock = frozen
            self.message = ("stepping freezes the other vCPUs" if frozen
                            else "the other vCPUs run while one steps")
        self.command(go)

    def set_register(self, vcpu: int, name: str, value: int) -> None:
        """Queue: write a register of a stopped vCPU (general registers, rip, rflags, cr2, fs/gs base)."""
        def go() -> None:
            from .machine.debug import REGS
            reg = name.lower()
            if reg not in EDITABLE_REGS:
                self.message = (f"{name} is read-only here: the machine derives state from it (page tables, "
                                "segment caches); change it from the guest")
                return
            v = self.machine.vcpus[vcpu]
            val = value & (2**64 - 1)
            if reg == "rflags":
                val = (val & 0x3F7FD5) | 0x2   # reserved bits as the CPU keeps them
            if reg == "rip":
                v.uc.ctl_remove_cache(val, val + 1)
            v.set_reg(REGS[reg], val)
            self.message = f"vCPU {vcpu}: {reg} = {val:#x}"
        self.command(go)

    def set_memory_view(self, expr: str) -> None:
        """What the memory panel shows: an expression over registers and symbols (`rsp`,
        `apf_reason_area + 64`, `u64(rsp)`), `reason` (the vCPU's reason area, guest-physical) or
        `phys 0x1000` (guest-physical), re-evaluated at every snapshot (so `rsp` follows RSP)."""
        def go() -> None:
            text = expr.strip() or "reason"
            err = self._mem_check(text)
            if err:
                self.message = f"memory view: {err}"
                return
            self.mem_expr = text
            self.message = f"memory view: {text}"
        self.command(go)

    def step(self, vcpu: int, mode: str = "into") -> None:
        """Step `vcpu`: "into" (one instruction), "over" (calls and int run through), "out" (to the
        return of the current function or handler), "line" / "line_over" (to the next source line)."""
        if mode == "into":
            self.step_instruction(vcpu)
            return
        if mode not in STEP_MODES:
            raise ValueError(f"step mode {mode!r}: one of {', '.join(STEP_MODES)}")
        self._start_task(vcpu, mode, None)

    def run_to_cursor(self, vcpu: int, addr: int) -> None:
        """Run until `vcpu` reaches `addr` (other stops win), then pause."""
        self._start_task(vcpu, "to", addr)

    def _start_task(self, vcpu: int, mode: str, addr: int | None) -> None:
        self.command(lambda: self._begin_task(vcpu, mode, addr))
        self._drive_sync()

    def _begin_task(self, vcpu: int, mode: str, addr: int | None) -> None:
        """Engine thread: make a stepping command the one in progress and set the engine running."""
        from .debug.debuginfo import line_table
        from .debug.stepping import Stepper
        m = self.machine
        if m.exit_requested:
            self.message = self.stop_reason
            return
        self._cancel_task()
        self._break = None
        self._step_events = 0
        st = Stepper(m, vcpu, lock=self.lock, describe=self.image.describe, lines=line_table(self.image),
                     limit=self._task_limit)
        gen = {"into": st.into, "over": st.over, "out": st.out, "line": lambda: st.line(False),
               "line_over": lambda: st.line(True)}.get(mode)
        self._task = gen() if gen else st.to(addr)
        names = {"into": "step (waiting for the vCPU to run)", "over": "step over", "out": "step out",
                 "line": "source step", "line_over": "source next", "to": f"run to {self.image.describe(addr or 0)}"}
        self._task_note = f"{names[mode]} on vCPU {vcpu}" + (" (others frozen)" if self.lock else "")
        self._task_vcpu = vcpu
        self.stop_reason = ""
        self.message = self._task_note
        self._running.set()

    def _task_limit(self) -> int | None:
        return self._sync_limit if self._thread is None and not self.external else None

    def _cancel_task(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.close()   # its temporary breakpoints go

    def _advance_task(self) -> None:
        """Engine thread: run the stepping command until it yields (a UI slice) or ends."""
        from .debug.stepping import Interrupted, StepError
        m = self.machine
        self._in_step = True
        try:
            next(self._task)
            return
        except StopIteration as e:
            self._task = None
            why = f"vCPU {self._task_vcpu}: {e.value}"
            self._stop_run(why)
            self.message = why
        except Interrupted:
            self._task = None
            if m.debug_stop is None and not m.exit_requested:
                self._stop_run(f"{self._task_note}: interrupted")
        except StepError as e:
            self._task = None
            why = f"{self._task_note}: {e}"
            self._stop_run(why)
            self.message = why
        finally:
            self._in_step = False

    def _drive_sync(self) -> None:
        if self._thread is None and self._running.is_set():
            self.pump()

    # --- events -----------------------------------------------------------------------------------
    def _on_event(self, e) -> None:
        if e.kind == "swapped_fault":
            self._last_fault_gfn[e.vcpu] = e.gfn
        elif e.kind == "msr_write" and e.handler == "kvm" and e.result == "ok" and e.value & 1:
            self._last_area[e.vcpu] = e.value & ~0x3F   # the reason area, remembered across a disable
        elif e.kind == "inject" and e.vcpu is not None:
            # the frame the delivery pushed starts at the handler's RSP (the stack panel finds the
            # innermost one still on the stack)
            frames = self._frames.setdefault(e.vcpu, [])
            frames.append((e.vector, e.error_code, e.handler, e.rip,
                           self.machine.vcpus[e.vcpu].reg(_RSP)))
            if len(frames) > 32:
                del frames[:16]
        if self._stepping:
            return
        if self._break is not None:
            if self._break(e):
                self._stop_run(self._break_note, self.log.total - 1)
            return
        if self._step_events:
            self._step_events -= 1
            if not self._step_events:
                self._stop_run(f"stepped to event #{self.log.total - 1:,} ({event_key(e)})", self.log.total - 1)
        elif self.events_per_second and is_paced(e) and self._task is None:
            self._request_pause()  # pace: one group of events per slice

    def _stop_run(self, reason: str, seq: int | None = None) -> None:
        self._break = None
        self._step_events = 0
        self._running.clear()
        self._request_pause()
        self.stop_reason = reason
        self.stop_event = seq

    def _exited(self) -> None:
        m = self.machine
        self._running.clear()
        self._break = None
        self._step_events = 0
        self._cancel_task()
        self.stop_reason = f"guest exited: status {m.exit_status} ({m.exit_reason})"
        st = getattr(m, "debug_stop", None)
        if st is not None:  # e.g. a catchpoint on the triple fault that ends the run
            m.debug_stop = None
            self.stop_reason = f"{self._describe_stop(st)}; {self.stop_reason}"
            self.message = self.stop_reason

    # --- headless ----------------------------------------------------------------------------
    def run(self, max_insns: int | None = None) -> RunResult:
        return self.machine.run(max_insns=max_insns)

    def expectations(self) -> list[ExpectResult]:
        out = []
        for i, ex in enumerate(self.scenario.expect):
            n = self._expect_counts.get(i, self.log.count(ex.event, ex.vcpu)) if ex.by is not None \
                else self.log.count(ex.event, ex.vcpu)
            out.append(ExpectResult(ex.describe(), n, ex.check(n)))
        return out

    # --- snapshots -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Build a snapshot now (engine thread, or when nothing else runs the machine)."""
        m = self.machine
        views, areas, code, regs, mem, stack = [], [], [], [], [], []
        apf = self._apf_snapshot()
        for v, st in zip(m.vcpus, apf):
            rip = v.rip
            views.append(VcpuView(
                index=v.index, state=v.state.value, rip=rip, where=self.image.describe(rip), cpl=v.cpl(),
                interrupts=bool(v.rflags & RFLAGS_IF), cr2=v.uc.reg_read(_CR2), retired=v.retired,
                pending=_pending(v), stall_gfn=v.stall_gfn, task=self._task_of(v)))
            code.append(self._code_view(v, rip))
            regs.append(self._regs_of(v))
            mem.append(self._mem_view(v))
            stack.append(self._stack_view(v))
            if st.enabled:
                self._last_area[v.index] = st.area_gpa
            gpa = self._last_area.get(v.index)
            areas.append(m.ram.read(gpa, 64) if gpa is not None and m.ram.contains(gpa, 64) else None)
        console = []
        for v in m.vcpus:
            tail = bytes(v.console[-8192:]).decode("utf-8", "replace").splitlines()[-50:]
            console.extend(f"[{v.index}] {l}" for l in tail)
        running = self._running.is_set() and not m.exit_requested
        return Snapshot(
            time=m.now, running=running, exited=m.exit_requested, exit_status=m.exit_status,
            exit_reason=m.exit_reason, vcpus=views, apf=apf, reason_areas=areas,
            swapped=m.ram.swapped_gfns(), in_flight=sorted(m._page_waiters), event_count=self.log.total,
            counts=dict(m.counts), console=console[-200:], events=self.log.window(),
            stop_reason="" if running else self.stop_reason, speed=self.events_per_second,
            commands=self.commands_done, message=self.message, frames=m.ram.frames,
            profile=self.kvm.profile, error=self.error, stop_event=None if running else self.stop_event,
            code=tuple(code), regs=tuple(regs), breakpoints=tuple(sorted(
                (BreakpointView(b.id, b.addr, b.vcpu, b.condition, b.hits)
                 for b in self.debugger.breakpoints.values() if not b.temporary), key=lambda b: (b.addr, b.id))),
            points=self._points(), memory=tuple(mem), stack=tuple(stack), lock=self.lock,
            stepping=self._task_note if self._task is not None else "")

    def _points(self) -> tuple:
        d = self.debugger
        out = [PointView(b.id, "break", b.label or self.image.describe(b.addr), b.addr, b.vcpu, b.condition, b.hits)
               for b in d.breakpoints.values() if not b.temporary]
        out += [PointView(w.id, "watch", w.label or f"{w.kind} {w.addr:#x} [{w.size}]", w.addr, w.vcpu, None, w.hits)
                for w in d.watchpoints.values()]
        out += [PointView(c.id, "catch", c.label, None, c.vcpu, None, c.hits)
                for c in getattr(d, "catchpoints", {}).values()]
        return tuple(sorted(out, key=lambda p: p.id))

    def _mem_target(self, v, text: str) -> tuple[int, bool]:
        """(address, guest-physical?) of a memory-view expression for vCPU `v`; the expression is
        parsed once and evaluated at every snapshot."""
        from .machine.debug import compile_expr
        self._mem_cpu = v
        if self._mem_compiled is None or self._mem_compiled[0] != text:
            physical = text.startswith("phys ") or text == "reason"
            body = text[5:] if text.startswith("phys ") else text

            def names(n: str) -> int | None:
                if n == "reason":   # not set yet: _mem_view says so; 0 lets expressions be checked
                    return self._last_area.get(self._mem_cpu.index, 0)
                return self._symbol_value(n)
            self._mem_compiled = (text, physical, compile_expr(body, names))
        _, physical, fn = self._mem_compiled
        return fn(v) & (2**64 - 1), physical

    def _mem_check(self, text: str) -> str:
        from .machine.debug import ConditionError
        v = self.machine.vcpus[0]
        try:
            self._mem_target(v, text)
        except ConditionError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001  (an expression the user typed)
            return f"{text!r}: {e}"
        return ""

    def _mem_view(self, v) -> MemView:
        text = self.mem_expr
        if text == "reason" and self._last_area.get(v.index) is None:
            return MemView(text, None, (), True, "no reason area yet (the guest has not enabled async PF)")
        try:
            addr, physical = self._mem_target(v, text)
        except Exception as e:  # noqa: BLE001
            return MemView(text, None, (), False, str(e))
        addr &= ~0xF
        rows = []
        ram = self.machine.ram
        for i in range(MEM_ROWS):
            a = addr + 16 * i
            if physical:
                rows.append(ram.read(a, 16) if ram.contains(a, 16) else None)
            else:
                rows.append(v.peek(a, 16))
        return MemView(text, addr, tuple(rows), physical)

    def _stack_view(self, v) -> StackView | None:
        try:
            rsp = v.reg(_RSP)
        except Exception:  # noqa: BLE001
            return None
        raw = v.peek(rsp, 8 * STACK_WORDS)   # one read; word by word only across an unmapped page
        if raw is not None:
            words = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
        else:
            words = []
            for i in range(STACK_WORDS):
                w = v.peek(rsp + 8 * i, 8)
                words.append(int.from_bytes(w, "little") if w is not None else None)
        frame = None
        for vector, err, handler, ret_rip, at in reversed(self._frames.get(v.index, ())):
            slot = at + (8 if err is not None else 0)
            if not (rsp <= slot + 32 and slot - rsp <= 0x10000):
                continue
            raw = v.peek(slot, 40)
            if raw is None or int.from_bytes(raw[:8], "little") != ret_rip:
                continue
            q = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, 40, 8)]
            frame = FrameView(vector, _vector_name(vector) if vector < 32 else f"vector {vector:#x}", at, err,
                              q[0], q[1], q[2], q[3], q[4], handler)
            break
        return StackView(rsp, tuple(words), frame)

    def _code_view(self, v, rip: int) -> "CodeView | None":
        """The code around RIP (engine thread): from the covering symbol's start when it is close."""
        try:
            start = rip
            hit = self.image.lookup(rip)
            if hit is not None and 0 < hit[1] <= CODE_BEFORE:
                start = hit[0].addr
            data = v.peek(start, rip - start + CODE_AFTER) if start != rip else None
            if data is None:
                start = rip
                data = v.peek(rip, CODE_AFTER) or v.peek(rip, 16)
            return CodeView(start, rip, data) if data else None
        except Exception:
            return None

    @staticmethod
    def _regs_of(v) -> dict:
        from .machine.debug import REGS
        out = {}
        try:
            rd = v.reg if hasattr(v, "reg") else v.uc.reg_read
            for name in SNAP_REGS:
                out[name] = rd(REGS[name])
            out["efer"] = v.uc.reg_read(_MSR_REG, 0xC0000080)
            out["cpl"] = v.cpl()
        except Exception:
            pass
        return out

    def _apf_snapshot(self) -> list:
        """kvm.snapshot(), made cheap enough to take 20 times a second with hundreds of works: each
        WorkInfo is reused while its work does not change, and the frozen snapshot models are built
        without re-validating what the model already holds (same fields as VcpuApf.snapshot)."""
        from .kvm.apf import VcpuApfSnapshot
        try:
            cache = self._info_cache
            out = []
            for i in sorted(self.kvm.vcpus):
                st = self.kvm.vcpus[i]
                entries = st.gfns.entries()
                home = st.gfns.home
                out.append(VcpuApfSnapshot.model_construct(
                    index=st.index, profile=st.profile.name, msr_val=st.msr_val, msr=st.msr,
                    enabled=st.enabled, send_user_only=st.send_user_only, area_gpa=st.area_gpa, id=st.id,
                    next_token=st.next_token, halted=st.halted, queued=st.queued,
                    queue=[self._info(w, cache) for w in st.queue], done=[self._info(w, cache) for w in st.done],
                    gfns=entries, gfn_home=[None if e is None else home(e) for e in entries],
                    gfn_distance=[None if e is None else (k - home(e)) & 63 for k, e in enumerate(entries)]))
            if len(cache) > 20_000:
                cache.clear()
            return out
        except AttributeError:  # the model changed shape: take its own (slower) snapshot
            return self.kvm.snapshot()

    @staticmethod
    def _info(w, cache: dict):
        key = (w.serial, w.state, w.token, w.completed_at, w.delivered_at, w.not_present, w.ready_token)
        info = cache.get(key)
        if info is None:
            info = cache[key] = w.info()
        return info

    def _task_of(self, v) -> str | None:
        """The guest's current task, when its symbols say: `current_task` is an array of one u64
        per vCPU holding either the address of the task's name (a NUL-terminated string) or of a
        task struct with a pointer to its name (into `task_name` when that symbol exists)."""
        sym = self.image.symbol("current_task")
        if sym is None:
            return None
        raw = v.peek(sym.addr + 8 * v.index, 8)
        if raw is None:
            return None
        ptr = int.from_bytes(raw, "little")
        if ptr == 0:
            return None
        names = self.image.symbol("task_name")
        in_names = (lambda a: names.addr <= a < names.addr + max(names.size, 1)) if names else (lambda a: False)
        if in_names(ptr):
            return _cstr(v.peek(ptr, 32))
        body = v.peek(ptr, 128) or b""
        ptrs = [int.from_bytes(body[i:i + 8], "little") for i in range(0, len(body) - 7, 8)]
        for q in ptrs:
            if in_names(q):
                return _cstr(v.peek(q, 32))
        direct = _cstr(body[:32], strict=True)
        if direct:
            return direct
        for q in ptrs:
            if 0x1000 <= q < self.machine.ram.size:
                name = _cstr(v.peek(q, 32), strict=True)
                if name:
                    return name
        return f"task@{ptr:#x}"

    # --- driven by another thread (the gdb stub) ---------------------------------------------------
    def drive_externally(self) -> None:
        """From now on another thread runs the machine and calls service(); UI commands queue up
        for it, and `latest` returns what it last published."""
        self.external = True
        self._publish()

    def service(self, force: bool = False) -> bool:
        """Driver thread, between slices: run queued commands, publish a snapshot (at most 20 per
        second unless forced or a command ran). True if a command ran."""
        ran = False
        while not self._commands.empty():
            self._commands.get_nowait()()
            ran = True
        now = time.monotonic()
        if ran or force or now - self._last_service >= 0.05:
            self._last_service = now
            self._publish()
        return ran

    def external_state(self, running: bool, reason: str = "") -> None:
        """Driver thread: say whether the machine runs, or why it stopped (shown in the status bar)."""
        if running:
            self.stop_reason = ""
            self._running.set()
        else:
            self._running.clear()
            self.stop_reason = reason or self.stop_reason

    @property
    def latest(self) -> Snapshot:
        if self._thread is not None or self.external:
            with self._lock:
                snap = self._snapshot
            if snap is not None:
                return snap
        key = self._state_key()
        if self._snapshot is None or key != self._snapshot_key:
            self._snapshot = self.snapshot()
            self._snapshot_key = key
        return self._snapshot

    def _state_key(self) -> tuple:
        m = self.machine
        return (m.now, self.log.total, self.commands_done, self._running.is_set(), self.stop_reason,
                self.events_per_second, m.exit_requested, self.message, self.error, self._task is None,
                self.lock)

    # --- threaded driving -------------------------------------------------------------------------
    def start(self, running: bool = True) -> None:
        self._snapshot = self.snapshot()
        self._snapshot_key = self._state_key()
        if running:
            self.stop_reason = ""
            self._running.set()
        self._thread = threading.Thread(target=self._loop, name="apfdbg-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._quit = True
        self._running.set()
        self._request_pause()
        if self._thread:
            self._thread.join(timeout=5)
        self._thread = None

    def _ticker(self) -> None:
        """Wall-clock slices for the engine thread, so the UI sees fresh snapshots."""
        while not self._quit:
            time.sleep(0.02)
            if self._in_step:
                self.machine.request_pause()

    def _loop(self) -> None:
        m = self.machine
        self._in_step = False
        threading.Thread(target=self._ticker, name="apfdbg-ticker", daemon=True).start()
        last_snap = 0.0
        try:
            while not self._quit:
                if not self._commands.empty():
                    while not self._commands.empty():
                        self._commands.get_nowait()()
                    self._publish()          # show the command's effect now, not at the next tick
                    last_snap = time.monotonic()
                if not self._running.is_set() or m.exit_requested:
                    self._cancel_task()       # a pause ends a stepping command
                    if m.exit_requested and not m._finished:
                        m.finish()
                        self._exited()
                    if self._state_key() != self._snapshot_key:
                        self._publish()
                    self._running.wait(timeout=0.05)
                    if m.exit_requested and self._running.is_set() and self._commands.empty():
                        time.sleep(0.05)
                    continue
                # Run until a pause: the ticker thread asks for one every 20 ms of wall time. A
                # pause resumes the interrupted turn, so the run is the same as a headless one
                # (slicing with step(until=...) would end turns early and change it).
                m.pause_requested = False
                if self._task is not None:
                    self._advance_task()
                else:
                    self._in_step = True
                    try:
                        m.step()
                    finally:
                        self._in_step = False
                self._debug_stopped()
                if m.exit_requested:
                    m.finish()
                    self._exited()
                if self.events_per_second and self._running.is_set() and self._break is None \
                        and not self._step_events and self._task is None:
                    # pace free runs only: breaks and stepping commands go at full speed
                    self._publish()
                    last_snap = time.monotonic()
                    time.sleep(1.0 / self.events_per_second)
                now = time.monotonic()
                if now - last_snap > 0.05 or not self._running.is_set():
                    self._publish()
                    last_snap = now
        except Exception as e:  # keep the UI alive and say what happened
            self.error = f"engine stopped: {type(e).__name__}: {e}"
            self.stop_reason = self.error
            self._running.clear()
            self._publish()

    def _publish(self) -> None:
        key = self._state_key()
        snap = self.snapshot()
        with self._lock:
            self._snapshot = snap
            self._snapshot_key = key


#: events that set the pace in slow motion (the rest run between them at full speed)
QUIET_KINDS = frozenset({"console", "io", "cpuid", "hlt", "resume", "msr_read"})


def is_paced(e) -> bool:
    if e.kind == "inject":
        return e.vector == 14
    if e.kind == "msr_write":
        return e.handler == "kvm"
    return e.kind not in QUIET_KINDS


def _gfns_text(gfns) -> str:
    gfns = list(gfns)
    if not gfns:
        return "nothing"
    if len(gfns) <= 4:
        return "gfn " + ", ".join(f"{g:#x}" for g in gfns)
    return f"{len(gfns)} frames ({gfns[0]:#x}..{gfns[-1]:#x})"


def _cstr(raw: bytes | None, strict: bool = False) -> str | None:
    if not raw:
        return None
    s = raw.split(b"\0", 1)[0]
    if strict and (len(s) < 2 or len(s) == len(raw) or not all(32 <= c < 127 for c in s)):
        return None
    return s.decode("ascii", "replace") or None


def _pending(v) -> str:
    if v.pending is None:
        return ""
    from .machine.faults import vector_name
    return vector_name(v.pending.vector)


from unicorn.x86_const import UC_X86_REG_CR2 as _CR2  # noqa: E402
from unicorn.x86_const import UC_X86_REG_RSP as _RSP  # noqa: E402
from unicorn.x86_const import UC_X86_REG_MSR as _MSR_REG  # noqa: E402

from .machine.faults import vector_name as _vector_name  # noqa: E402

