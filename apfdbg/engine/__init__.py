"""The engine: one machine with its KVM host, driven by a scenario, headless or from a UI.

Headless and TUI runs go through this same class. The UI never touches the machine: it sends
commands (run on the engine thread between vCPU turns) and reads immutable snapshots.

`Engine` holds the run's state and composes the rooms of this package:
- `eventlog`: the event log (`EventLog`, `EventWindow`);
- `snapshot`, `guestviews`: the views the UI reads and the builder that takes them;
- `commands`: host commands and scenario actions (page out, complete, wake-all, pokes);
- `control`: run control (pause, resume, event steps and breaks, synchronous driving);
- `debugging`: points, register edits and the stepping commands;
- `runloop`: the engine thread and pacing, or service for an external driver (the gdb stub);
- `expect`: the scenario's expectations.
`commands`, `control`, `debugging` and `runloop` are mixins: they share the run state (the running
flag, the break, the stepping task, the stop reason) that every one of them reads and writes.
"""
from __future__ import annotations

import queue
import threading
import time  # noqa: F401  (tests patch apfdbg.engine.time.sleep)
from typing import Any, Callable

from ..events import event_key  # noqa: F401  (re-exported)
from ..host.kvm import build_machine
from ..machine.debug import Debugger
from ..machine.image import Image
from ..machine.machine import Machine
from ..scenario import Scenario, ScenarioError, parse_gfns
from .commands import HostCommands
from .control import RunControl
from .debugging import EDITABLE_REGS, STEP_MODES, DebugCommands  # noqa: F401  (re-exported)
from .eventlog import EventLog, EventWindow  # noqa: F401  (re-exported)
from .expect import Expectations, ExpectResult
from .runloop import QUIET_KINDS, ThreadedDriver, is_paced  # noqa: F401  (re-exported)
from .snapshot import (BreakpointView, CodeView, FrameView, MemView, PointView, Snapshot,  # noqa: F401
                       SnapshotBuilder, StackView, VcpuView)


class Engine(HostCommands, RunControl, DebugCommands, ThreadedDriver):
    def __init__(self, image: Image, scenario: Scenario | None = None) -> None:
        self.scenario = scenario or Scenario()
        sc = self.scenario
        self.image = image
        self.machine: Machine = build_machine(
            image, sc.machine, profile=sc.host.profile, seed=sc.host.seed,
            latency=sc.pager.latency, auto_pager=sc.pager.auto.config() if sc.pager.auto else None)
        self.kvm = self.machine.host.kvm
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
        n = len(self.machine.vcpus)
        for i, action in enumerate(sc.actions):
            if action.vcpu is not None and not 0 <= action.vcpu < n:  # known only now (--vcpus)
                raise ScenarioError(f"actions[{i}].vcpu: there is no vCPU {action.vcpu}: the machine has "
                                    f"{n} (0-{n - 1})")
            self._schedule(action, action.at)
        self._expect = Expectations(sc, self.machine, self.log)
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
        self.views = SnapshotBuilder(self)     # builds what the UI reads
        self._snapshot: Snapshot | None = None
        self._snapshot_key: tuple | None = None
        self._lock = threading.Lock()
        self.error: str | None = None
        self.lock = sc.debug.lock              # stepping freezes the other vCPUs
        self._sync_limit: int | None = None
        self._task_vcpu = 0
        self._in_step = False
        self.mem_expr = sc.debug.memory        # what the memory panel shows
        self._task = None                      # a stepping command in progress (generator)
        self._task_note = ""
        #: another thread owns the machine (the gdb stub): it calls service() between its slices
        self.external = False
        self._last_service = 0.0
        self._initial_points(sc.debug.points)

    def snapshot(self) -> Snapshot:
        """Build a snapshot now (engine thread, or when nothing else runs the machine)."""
        return self.views.build()

    def expectations(self) -> list[ExpectResult]:
        return self._expect.results()
