"""The engine thread: runs the machine in wall-clock slices, paces slow motion, runs queued
commands and publishes snapshots; or, driven by another thread (the gdb stub), services it."""
from __future__ import annotations

import threading
import time

from .snapshot import Snapshot


class ThreadedDriver:
    """Engine methods (a mixin) for threaded and externally driven runs."""

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

