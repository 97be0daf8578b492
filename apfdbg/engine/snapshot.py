"""What the UI reads: immutable views of the whole run at one instant, and the builder that takes them.

The builder keeps what snapshots need between two of them (per-vCPU reason areas, recent interrupt
frames, cached work infos) so that a snapshot costs little enough to take 20 times a second.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unicorn.x86_const import UC_X86_REG_CR2 as _CR2

from ..kvm.apf import VcpuApfSnapshot
from ..machine.faults import vector_name
from ..machine.vcpu import RFLAGS_IF
from .guestviews import CodeView, FrameView, GuestViews, MemView, StackView  # noqa: F401 (views)

if TYPE_CHECKING:
    from .eventlog import EventWindow


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



class SnapshotBuilder(GuestViews):
    """Builds Snapshots of one engine (it reads the engine's state, never changes it)."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self._info_cache: dict = {}

    def build(self) -> Snapshot:
        """A snapshot now (engine thread, or when nothing else runs the machine)."""
        m = self.engine.machine
        views, areas, code, regs, mem, stack = [], [], [], [], [], []
        apf = self._apf_snapshot()
        for v, st in zip(m.vcpus, apf):
            rip = v.rip
            views.append(VcpuView(
                index=v.index, state=v.state.value, rip=rip, where=self.engine.image.describe(rip), cpl=v.cpl(),
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
        running = self.engine._running.is_set() and not m.exit_requested
        return Snapshot(
            time=m.now, running=running, exited=m.exit_requested, exit_status=m.exit_status,
            exit_reason=m.exit_reason, vcpus=views, apf=apf, reason_areas=areas,
            swapped=m.ram.swapped_gfns(), in_flight=sorted(m._page_waiters), event_count=self.engine.log.total,
            counts=dict(m.counts), console=console[-200:], events=self.engine.log.window(),
            stop_reason="" if running else self.engine.stop_reason, speed=self.engine.events_per_second,
            commands=self.engine.commands_done, message=self.engine.message, frames=m.ram.frames,
            profile=self.engine.kvm.profile, error=self.engine.error, stop_event=None if running else self.engine.stop_event,
            code=tuple(code), regs=tuple(regs), breakpoints=tuple(sorted(
                (BreakpointView(b.id, b.addr, b.vcpu, b.condition, b.hits)
                 for b in self.engine.debugger.breakpoints.values() if not b.temporary), key=lambda b: (b.addr, b.id))),
            points=self._points(), memory=tuple(mem), stack=tuple(stack), lock=self.engine.lock,
            stepping=self.engine._task_note if self.engine._task is not None else "")

    def _points(self) -> tuple:
        d = self.engine.debugger
        out = [PointView(b.id, "break", b.label or self.engine.image.describe(b.addr), b.addr, b.vcpu, b.condition, b.hits)
               for b in d.breakpoints.values() if not b.temporary]
        out += [PointView(w.id, "watch", w.label or f"{w.kind} {w.addr:#x} [{w.size}]", w.addr, w.vcpu, None, w.hits)
                for w in d.watchpoints.values()]
        out += [PointView(c.id, "catch", c.label, None, c.vcpu, None, c.hits)
                for c in getattr(d, "catchpoints", {}).values()]
        return tuple(sorted(out, key=lambda p: p.id))

    def _apf_snapshot(self) -> list:
        """kvm.snapshot(), made cheap enough to take 20 times a second with hundreds of works: each
        WorkInfo is reused while its work does not change, and the frozen snapshot models are built
        without re-validating what the model already holds (same fields as VcpuApf.snapshot)."""
        try:
            cache = self._info_cache
            out = []
            for i in sorted(self.engine.kvm.vcpus):
                st = self.engine.kvm.vcpus[i]
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
            return self.engine.kvm.snapshot()

    @staticmethod
    def _info(w, cache: dict):
        key = (w.serial, w.state, w.token, w.completed_at, w.delivered_at, w.not_present, w.ready_token)
        info = cache.get(key)
        if info is None:
            info = cache[key] = w.info()
        return info


    def note(self, e) -> None:
        """An event the views remember (the engine calls this for msr_write and inject events)."""
        if e.kind == "msr_write":
            if e.handler == "kvm" and e.result == "ok" and e.value & 1:
                self._last_area[e.vcpu] = e.value & ~0x3F   # the reason area, remembered across a disable
        elif e.vcpu is not None:
            # the frame the delivery pushed starts at the handler's RSP (the stack panel finds the
            # innermost one still on the stack)
            frames = self._frames.setdefault(e.vcpu, [])
            frames.append((e.vector, e.error_code, e.handler, e.rip,
                           self.engine.machine.vcpus[e.vcpu].reg(_RSP)))
            if len(frames) > 32:
                del frames[:16]


def _pending(v) -> str:
    if v.pending is None:
        return ""
    return vector_name(v.pending.vector)


from unicorn.x86_const import UC_X86_REG_RSP as _RSP  # noqa: E402
