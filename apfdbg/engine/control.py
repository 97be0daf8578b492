"""Run control: commands queued for the engine thread, pause/resume, event steps and breaks,
single instructions, synchronous driving, and what each event does to the run."""
from __future__ import annotations

from typing import Any, Callable

from ..events import event_key
from ..machine.machine import RunResult
from ..scenario import Action, EventMatch
from .runloop import is_paced


class RunControl:
    """Engine methods (a mixin): they share the engine's run state (`_running`, `_break`,
    `_step_events`, `_task`, `stop_reason`)."""

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

    def _drive_sync(self) -> None:
        if self._thread is None and self._running.is_set():
            self.pump()

    def _on_event(self, e) -> None:
        if e.kind == "swapped_fault":
            self._last_fault_gfn[e.vcpu] = e.gfn
        elif e.kind == "msr_write" or e.kind == "inject":
            self.views.note(e)
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

    def run(self, max_insns: int | None = None) -> RunResult:
        return self.machine.run(max_insns=max_insns)

