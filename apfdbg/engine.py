"""The engine: one machine with its KVM host, driven by a scenario, headless or from a UI.

Headless and TUI runs go through this same class. The UI never touches the machine: it sends
commands (run on the engine thread between vCPU turns) and reads immutable snapshots.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .host.kvm import build_machine
from .machine.config import MachineConfig
from .machine.image import Image
from .machine.machine import Machine, RunResult
from .machine.vcpu import RFLAGS_IF, State
from .scenario import Action, Scenario, parse_gfns


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


class EventLog:
    """Every event of the run, in order; the oldest are dropped past `capacity` (counts stay exact)."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.events: deque = deque(maxlen=capacity)
        self.total = 0
        self.counts: dict[tuple[str, int | None], int] = {}

    def __call__(self, e) -> None:
        self.events.append(e)
        self.total += 1
        key = (e.kind, e.vcpu)
        self.counts[key] = self.counts.get(key, 0) + 1

    def count(self, kind: str, vcpu: int | None = None) -> int:
        if vcpu is None:
            return sum(n for (k, _v), n in self.counts.items() if k == kind)
        return self.counts.get((kind, vcpu), 0)

    def tail(self, n: int) -> list:
        return list(self.events)[-n:]


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
        self.log = EventLog()
        self.machine.sinks.append(self.log)
        self._expect_counts: dict[int, int] = {}
        for action in sc.actions:
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
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self.error: str | None = None

    # --- commands (same effect from a scenario, the UI, or a test) -----------------------------
    def _schedule(self, action: Action, at: int) -> None:
        def fire() -> None:
            self.apply(action)
            if action.every:
                self._schedule(action, self.machine.now + action.every)
        self.machine.timeline.schedule(at, fire)

    def apply(self, a: Action) -> None:
        m = self.machine
        if a.do == "page_out":
            m.page_out(parse_gfns(a.gfns))
        elif a.do == "page_in":
            for g in parse_gfns(a.gfns):
                m.page_in(g)
        elif a.do == "page_out_random":
            pool = parse_gfns(a.gfns) if a.gfns is not None else range(0x100, m.ram.frames)
            resident = [g for g in pool if not m.ram.is_swapped(g)]
            m.page_out(sorted(m.rng.sample(resident, min(a.count, len(resident)))))
        elif a.do == "complete":
            work = self.kvm.find_work(a.token, a.vcpu)
            if work is not None:
                self.kvm.complete(work)
        elif a.do == "complete_oldest":
            self.kvm.complete_oldest(a.vcpu)
        elif a.do == "complete_all":
            self.kvm.complete_all(a.vcpu)
        elif a.do == "wake_all":
            self.kvm.wake_all(a.vcpu)
        elif a.do == "reset_vcpu":
            self.kvm.reset_vcpu(a.vcpu)

    def command(self, action: Action | Callable[[], None]) -> None:
        """Queue a command for the engine thread (or run it now when no thread drives the engine)."""
        fn = action if callable(action) else (lambda: self.apply(action))
        if self._thread is None:
            fn()
        else:
            self._commands.put(fn)
            self.machine.pause_requested = True

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
        views, areas = [], []
        apf = self.kvm.snapshot()
        for v, st in zip(m.vcpus, apf):
            rip = v.rip
            views.append(VcpuView(
                index=v.index, state=v.state.value, rip=rip, where=self.image.describe(rip), cpl=v.cpl(),
                interrupts=bool(v.rflags & RFLAGS_IF), cr2=v.uc.reg_read(_CR2), retired=v.retired,
                pending=_pending(v), stall_gfn=v.stall_gfn, task=self._task_of(v)))
            gpa = st.area_gpa if st.enabled else None
            areas.append(m.ram.read(gpa, 64) if gpa is not None and m.ram.contains(gpa, 64) else None)
        console = []
        for v in m.vcpus:
            console.extend(f"[{v.index}] {l}" for l in v.console.decode("utf-8", "replace").splitlines()[-50:])
        return Snapshot(
            time=m.now, running=self._running.is_set(), exited=m.exit_requested, exit_status=m.exit_status,
            exit_reason=m.exit_reason, vcpus=views, apf=apf, reason_areas=areas,
            swapped=m.ram.swapped_gfns(), in_flight=sorted(m._page_waiters), event_count=self.log.total,
            counts=dict(m.counts), console=console[-200:])

    def _task_of(self, v) -> str | None:
        """The guest's current task, when its symbols say (`current_task` + `task_name`)."""
        return None

    @property
    def latest(self) -> Snapshot:
        with self._lock:
            snap = self._snapshot
        return snap if snap is not None else self.snapshot()

    # --- threaded driving -------------------------------------------------------------------------
    def start(self, running: bool = True) -> None:
        self._snapshot = self.snapshot()
        if running:
            self._running.set()
        self._thread = threading.Thread(target=self._loop, name="apfdbg-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._quit = True
        self._running.set()
        self.machine.pause_requested = True
        if self._thread:
            self._thread.join(timeout=5)
        self._thread = None

    def pause(self) -> None:
        self._running.clear()
        self.machine.pause_requested = True

    def resume(self) -> None:
        self._running.set()

    def step_events(self, n: int = 1) -> None:
        """Run until `n` more events have happened, then pause."""
        def go() -> None:
            self._step_events = n
            self._running.set()
        self.command(go)

    def _on_event(self, _e) -> None:
        if self._step_events:
            self._step_events -= 1
            if not self._step_events:
                self._running.clear()
                self.machine.pause_requested = True
        elif self.events_per_second:
            self.machine.pause_requested = True  # pace: one event per slice

    def _loop(self) -> None:
        m = self.machine
        m.sinks.append(self._on_event)
        last_snap = 0.0
        try:
            while not self._quit:
                while not self._commands.empty():
                    self._commands.get_nowait()()
                if not self._running.is_set() or m.exit_requested:
                    self._publish()
                    self._running.wait(timeout=0.05)
                    if m.exit_requested and self._running.is_set() and self._commands.empty():
                        time.sleep(0.05)
                    continue
                m.pause_requested = False
                slice_end = time.monotonic() + 0.02
                while time.monotonic() < slice_end and not m.pause_requested and not m.exit_requested:
                    m.step(until=m.now + 50_000)
                if m.exit_requested:
                    m.finish()
                    self._running.clear()
                if self.events_per_second:
                    time.sleep(1.0 / self.events_per_second)
                now = time.monotonic()
                if now - last_snap > 0.05:
                    self._publish()
                    last_snap = now
        except Exception as e:  # keep the UI alive and say what happened
            self.error = f"engine stopped: {type(e).__name__}: {e}"
            self._running.clear()
            self._publish()

    def _publish(self) -> None:
        snap = self.snapshot()
        with self._lock:
            self._snapshot = snap


def _pending(v) -> str:
    if v.pending is None:
        return ""
    from .machine.faults import vector_name
    return vector_name(v.pending.vector)


from unicorn.x86_const import UC_X86_REG_CR2 as _CR2  # noqa: E402
