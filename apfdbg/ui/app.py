"""The apfdbg TUI: panels over an Engine's snapshots, keys that send it commands.

Layering: the app reads only `Engine.latest` (immutable snapshots) and calls the engine's command
methods (`command(Action(...))`, `pause`, `resume`, `step_events`, `run_until`, `step_instruction`,
`set_speed`).  It never touches the machine.  It redraws from the latest snapshot at a bounded rate
(REFRESH_HZ) and only when the snapshot changed.

Long: the app and its key actions (one method per binding in ui/bindings.py); the debugger's
actions are already in ui/debugger.py, the panels in ui/panels/.
"""
from __future__ import annotations

import asyncio
import sys
import time
from functools import partial
from pathlib import Path
from typing import Iterable

from rich.text import Text
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Static

from ..engine import Engine, Snapshot
from ..scenario import Action, EventMatch, TourStep
from . import bindings, textual_fixes
from .base import Panel, ViewCtx
from .debugger import DebugActions
from .fmt import APF_BREAK_KINDS, APF_KINDS, num
from .layout import DEBUG_PANELS, DebugArea
from .panels import (HIDDEN_BY_DEFAULT, CodePanel, ConsolePanel, ExplainPanel, GuestMemPanel, HashPanel, MemoryPanel,
                     MsrPanel, PANELS, PointsPanel, ReasonPanel, RegsPanel, StackPanel, TimelinePanel, VcpuPanel,
                     WorksPanel)
from .screens import FilterScreen, HelpScreen, PanelsScreen
from .themes import DEFAULT_THEME, ThemeError, bundled_themes, load_theme_file

textual_fixes.install()

REFRESH_HZ = 20
#: while the guest free-runs at full speed, redraw at most this often (the UI shares the interpreter
#: with the engine thread: every millisecond spent drawing is one the guest does not run)
FULL_SPEED_HZ = 10
#: sys.setswitchinterval while the engine thread runs: a thread waiting for the interpreter lock forces
#: the holder to let go after this long.  The engine lets go by itself around every stretch of guest
#: code it runs (Unicorn releases the lock), so the UI never waits long; but the 5 ms default would cut
#: each redraw into pieces, every switch costing both threads cache and time.
GIL_SWITCH_INTERVAL = 0.02
#: the speed scale: "key" = one event per key press, numbers = events per second, "full"
SPEEDS: list = ["key", 1, 2, 4, 10, 25, 100, 1000, "full"]
COMPACT_WIDTH = 120
COMPACT_HEIGHT = 32
#: below this height the debugger panels and the APF rows take turns at most of the screen (focus decides)
TALL_HEIGHT = 50
RANDOM_PAGE_OUTS = 8


def speed_label(s) -> str:
    if s == "key":
        return "1 event per key"
    if s == "full":
        return "full speed"
    return f"{s} ev/s"


class StatusBar(Widget):
    """One line: run state, virtual time, events, speed, what the last command did.  (A plain widget:
    Static.update would ask for a layout pass on every frame.)"""

    DEFAULT_CSS = """
    StatusBar { dock: top; height: 1; background: $panel; color: $foreground; padding: 0 1; }
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.text = Text("")

    def update(self, text: Text) -> None:
        if text != self.text:
            self.text = text
            self.refresh()

    def render(self) -> Text:
        return self.text


class TourBar(Static):
    DEFAULT_CSS = """
    TourBar { height: auto; max-height: 12; background: $surface; border-top: heavy $accent;
              padding: 0 1; }
    """


class ApfApp(DebugActions, App):
    CSS_PATH = "app.tcss"
    TITLE = "apfdbg"
    ENABLE_COMMAND_PALETTE = True
    ALLOW_IN_MAXIMIZED_VIEW = "Footer, StatusBar, TourBar"
    BINDINGS = bindings.app_bindings()

    def __init__(self, engine: Engine, *, theme: str | None = None, tour: list[TourStep] | None = None,
                 threaded: bool = True, speed=None, paused: bool | None = None, refresh_hz: float = REFRESH_HZ,
                 compact: bool | None = None, image_name: str | None = None) -> None:
        self.tour_steps = list(tour or [])
        super().__init__()
        self.engine = engine
        self.threaded = threaded
        self.refresh_hz = refresh_hz
        ui = engine.scenario.ui
        self.speed = speed if speed is not None else ui.speed
        if self.speed not in SPEEDS:
            SPEEDS.append(self.speed) if isinstance(self.speed, (int, float)) else None
            SPEEDS[:] = ["key"] + sorted(s for s in set(SPEEDS) if isinstance(s, (int, float))) + ["full"]
        self.start_paused = ui.paused if paused is None else paused
        if self.tour_steps:
            self.start_paused = True
        self.vcpu = min(ui.vcpu, len(engine.machine.vcpus) - 1)
        self.hidden: set[str] = set(ui.hide) | (set(HIDDEN_BY_DEFAULT) - {ui.focus})
        self.force_compact = compact
        self.compact = False
        self.image_name = image_name or Path(engine.image.path).name
        self.snap: Snapshot | None = None
        self.pause_snap: Snapshot | None = None
        self.base: Snapshot | None = None
        self._base_time = 0.0
        self.compact_panel = ui.focus or "timeline"
        self.tour_index = -1
        self.tour_state = ""
        self._last_stop_event: int | None = None
        self._awaiting = 0
        self.frame_times: list[float] = []   # seconds spent applying each snapshot (bench)
        self._last_apply = 0.0
        self._switch_interval = sys.getswitchinterval()
        self._slow_panels_at = 0.0
        self._frame_no = 0
        self._themes = bundled_themes()
        self.signalled: int | None = None   # the stop signal that ended the app (stop_by_signal)
        self._loop: asyncio.AbstractEventLoop | None = None
        for t in self._themes:
            self.register_theme(t)
        self._theme_names = [t.name for t in self._themes]
        self.theme = DEFAULT_THEME
        if theme:
            self.set_theme(theme)

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "tour_next":
            return bool(self.tour_steps)
        if action == "edit_register":    # Enter edits a register only there (else: the tour's Enter)
            return self.focused_panel() is self.panel("regs")
        return True

    def gdb_drives(self) -> bool:
        """Run control belongs to gdb when the stub drives the engine: say so instead of acting."""
        if self.engine.external:
            self.notify("gdb drives this run: continue, step and interrupt from gdb (host keys still work).",
                        severity="warning")
            return True
        return False

    # --- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with Vertical(id="main"):
            yield VcpuPanel()
            with DebugArea(id="debug"):
                yield CodePanel(self.engine.image)
                yield RegsPanel()
                yield StackPanel(self.engine.image)
                yield GuestMemPanel(self.engine.image)
                yield PointsPanel()
            with Horizontal(id="upper"):
                yield HashPanel()
                with Vertical(id="col-mid"):
                    yield WorksPanel()
                    yield MsrPanel()
                with Vertical(id="col-right"):
                    yield ExplainPanel()
                    yield ReasonPanel()
            with Horizontal(id="lower"):
                yield TimelinePanel()
                yield MemoryPanel(self.engine.pager_frames)
                yield ConsolePanel()
        if self.tour_steps:
            yield TourBar(id="tour")
        yield Footer()

    @property
    def panels(self) -> list[Panel]:
        return [self.query_one(f"#{cls.PANEL_ID}", Panel) for cls in PANELS]

    def panel(self, pid: str) -> Panel:
        return self.query_one(f"#{pid}", Panel)

    async def _on_key(self, event) -> None:
        if not self.get_screen_stack():   # a key still queued while the app closes: nothing to do it in
            event.prevent_default()

    def stop_by_signal(self, signum: int) -> None:
        """Exit with status 128 + signum. Safe in a signal handler: the app's own loop does the exit
        (and so restores the terminal and stops the engine thread)."""
        self.signalled = signum
        if self._loop is not None:
            self._loop.call_soon_threadsafe(partial(self.exit, None, 128 + signum))

    def on_mount(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.signalled is not None:   # it came before the loop ran
            self.exit(None, 128 + self.signalled)
        eng = self.engine
        self._apply_speed(start=True)
        if eng.external:
            pass  # another thread (the gdb stub) runs the machine and publishes snapshots
        elif self.threaded:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(GIL_SWITCH_INTERVAL)
            eng.start(running=not self.start_paused and self.speed != "key")
        elif not self.start_paused and self.speed != "key":
            eng.resume()
        self._relayout()
        self.poll(force=True)
        self.set_interval(1 / self.refresh_hz, self.poll)
        self.watch(self.screen, "maximized", self._zoom_changed, init=False)
        self.watch(self.screen, "focused", lambda _w: self._arrange_debug(), init=False)
        focus = self.engine.scenario.ui.focus or "timeline"
        self.panel(focus).focus()
        if self.tour_steps:
            self.action_tour_next()

    def on_unmount(self) -> None:
        if self.threaded and not self.engine.external:
            self.engine.stop()
            sys.setswitchinterval(self._switch_interval)

    def on_resize(self) -> None:
        self._relayout()

    def _relayout(self) -> None:
        size = self.size
        compact = self.force_compact if self.force_compact is not None else (
            size.width < COMPACT_WIDTH or size.height < COMPACT_HEIGHT)
        self.compact = compact
        self.screen.set_class(compact, "-compact")
        for p in self.panels:
            pid = p.PANEL_ID
            if compact:
                show = pid not in self.hidden and (pid == "vcpus" or pid == self.compact_panel)
                if self.compact_panel in self.hidden and pid != "vcpus":
                    show = False
            else:
                show = pid not in self.hidden
            p.display = show
        for cid in ("debug", "col-mid", "col-right", "upper", "lower"):
            c = self.query_one(f"#{cid}")
            c.display = any(w.display for w in c.query(Panel))
        self._arrange_debug()
        if self.snap is not None:
            self._push(self.snap, only_new=True)

    def _arrange_debug(self) -> None:
        """The debugger panels' area: taller the more of them are shown; on a short screen, tall while
        one of them has the focus (the APF rows give way) and short again when an APF panel has it."""
        area = self.query_one(DebugArea)
        shown = [pid for pid in DEBUG_PANELS if self.panel(pid).display]
        fr = 12 if len(shown) <= 2 else 30
        if self.size.height < TALL_HEIGHT and len(shown) > 1:
            w = area.screen.focused          # the main screen's (a dialog may be on top)
            fr = 60 if w is not None and w.parent is area else 12
        if shown == ["points"] and not self.compact:      # alone, the breakpoints need a few lines
            area.styles.height = max(6, len(self.snap.points) + 4 if self.snap else 0)
        else:
            area.styles.height = f"{fr}fr"
        area.arrange_panels()
        self._arranged_points = len(self.snap.points) if self.snap is not None else 0

    def _zoom_changed(self, maximized) -> None:
        area = self.query_one(DebugArea)
        if maximized is not None and maximized.parent is area:
            area.release(maximized)
        else:
            area.arrange_panels()

    _arranged_points = 0

    # --- snapshots -------------------------------------------------------------------------------
    def poll(self, force: bool = False) -> None:
        if self._closing or self._closed:   # a last timer tick while the app closes
            return
        snap = self.engine.latest
        if snap is self.snap and not force:
            return
        t0 = time.perf_counter()
        prev = self.snap
        if (not force and snap.running and self.speed == "full" and prev is not None and prev.running
                and snap.commands == prev.commands and t0 - self._last_apply < 1 / FULL_SPEED_HZ - 0.004):
            return
        self._last_apply = t0
        self._apply(snap)
        self.frame_times.append(time.perf_counter() - t0)
        if len(self.frame_times) > 10_000:
            del self.frame_times[:5_000]

    def _apply(self, snap: Snapshot) -> None:
        prev = self.snap
        self.snap = snap
        self._follow_stop(snap)
        self._check_replies(snap)
        if len(snap.points) != self._arranged_points and self.panel("points").display:
            self._arrange_debug()
        now = time.monotonic()
        if self.base is None:
            self.base = snap
            self._base_time = now
        if snap.running:
            # while running, highlight what changed during the last second (no flicker)
            if now - self._base_time > 1.0:
                self.base = prev or snap
                self._base_time = now
        else:
            key = (snap.time, snap.event_count, snap.commands)
            ps = self.pause_snap
            if ps is None:
                self.pause_snap = snap
            elif key != (ps.time, ps.event_count, ps.commands):
                self.base = ps          # a new stop: highlight what changed since the previous one
                self.pause_snap = snap
                self._base_time = now
        if snap.stop_event is not None and snap.stop_event != self._last_stop_event and not snap.running:
            self._last_stop_event = snap.stop_event
            tl = self.panel("timeline")
            self._push(snap)
            tl.select_seq(snap.stop_event)
            self.panel("explain").explain_seq(None)
        else:
            self._push(snap)
        self._update_status()
        if self.tour_steps:
            self._update_tour()

    def _ctx(self) -> ViewCtx:
        snap = self.snap
        self.vcpu = max(0, min(self.vcpu, len(snap.vcpus) - 1))
        return ViewCtx(snap=snap, base=self.base or snap, vcpu=self.vcpu)

    def _push(self, snap: Snapshot, only_new: bool = False) -> None:
        ctx = self._ctx()
        now = time.monotonic()
        # While the guest free-runs at full speed the panels' contents change faster than anyone reads
        # them, and every line drawn is time the guest does not get: the vCPUs and the timeline follow
        # every frame, the detail panels every other frame (half of them each time), Explain at 2 Hz.
        fast = snap.running and self.speed == "full" and not only_new
        self._frame_no += 1
        slow_ok = not fast or now - self._slow_panels_at >= 0.5
        if slow_ok and fast:
            self._slow_panels_at = now
        for i, p in enumerate(self.panels):
            if p.display or p.is_maximized:
                if only_new and p.ctx is not None and p.ctx.snap is snap and p.ctx.vcpu == ctx.vcpu:
                    continue
                if fast and p.ctx is not None and p.ctx.vcpu == ctx.vcpu:
                    if p.TIER == 2 and not slow_ok:
                        continue
                    if p.TIER == 1 and (self._frame_no + i) % 2:
                        continue
                p.begin_update()
                p.update_ctx(ctx)
                p.flush()
            elif p.ctx is not None and p.ctx.snap is not snap:
                p.ctx = None

    def explain_seq(self, seq: int | None) -> None:
        """A panel's cursor moved to event `seq` (None: its last row): explain it."""
        tl = self.panel("timeline")
        if seq is not None and tl.rows and tl.cursor == tl.rows - 1 and self.snap is not None and self.snap.running:
            seq = None
        self.panel("explain").explain_seq(seq)

    def _update_status(self) -> None:
        s = self.snap
        t = Text()
        if s.error:
            t.append(" ERROR ", style="bold reverse red")
            t.append(f" {s.error}  ")
        elif s.running and s.stepping:
            t.append(" ▶ STEPPING ", style="bold reverse green")
            t.append(f" {s.stepping} ")
        elif s.running:
            t.append(" ▶ RUNNING ", style="bold reverse green")
            t.append(f" {speed_label(self.speed)} ")
        elif s.exited:
            t.append(" ■ EXITED ", style="bold reverse")
            t.append(f" {s.stop_reason or s.exit_reason} ")
        else:
            t.append(" ❚❚ PAUSED ", style="bold reverse yellow")
            t.append(f" {s.stop_reason or 'paused'} ")
            if self.speed == "key":
                t.append("(space/. steps) ", style="dim")
        t.append(f"│ t={num(s.time)} │ {num(s.event_count)} events │ vCPU {self.vcpu} ", style="")
        t.append("· steps alone " if s.lock else "· steps with others ", style="dim")
        t.append("│ ")
        t.append(f"{self.image_name} · {s.profile.name if s.profile else ''}", style="dim")
        if s.message:
            t.append(f" │ {s.message}", style="italic")
        t.truncate(max(10, self.size.width - 2))
        self.query_one(StatusBar).update(t)

    # --- tour ------------------------------------------------------------------------------------
    def _update_tour(self) -> None:
        bar = self.query_one(TourBar)
        n = len(self.tour_steps)
        if self.tour_index < 0:
            bar.update(Text("Guided tour: press Enter to start", style="bold"))
            return
        step = self.tour_steps[self.tour_index]
        s = self.snap
        reached = step.until is None or (not s.running and s.stop_reason.startswith(self._tour_note(step)))
        t = Text()
        t.append(f"Tour {self.tour_index + 1}/{n} · {step.title}", style="bold")
        if reached:
            more = "Enter: next step" if self.tour_index + 1 < n else "end of the tour: the keys are yours (? lists them)"
            t.append(f"   [{more}]", style="dim")
        else:
            t.append(f"   running until {step.until.describe()} …", style="dim")
        t.append("\n")
        t.append(step.text.strip())
        bar.update(t)

    def _tour_note(self, step: TourStep) -> str:
        return f"tour: {step.title}"

    def action_tour_next(self) -> None:
        if not self.tour_steps:
            return
        if self.tour_index + 1 >= len(self.tour_steps):
            self.notify("That was the last step of the tour.")
            return
        self.tour_index += 1
        step = self.tour_steps[self.tour_index]
        if step.vcpu is not None:
            self.vcpu = step.vcpu
        if step.focus:
            self.compact_panel = step.focus
            self._relayout()
            self.panel(step.focus).focus()
        if step.until is not None:
            self.engine.pause()
            self.engine.run_until(step.until, note=self._tour_note(step))
            self._expect_change()
        self.poll(force=True)

    # --- helpers ---------------------------------------------------------------------------------
    def _expect_change(self) -> None:
        """After a command in threaded mode: poll quickly until the engine has published its effect."""
        if self.threaded:
            self._awaiting = 20
            self.set_timer(0.005, self._quick_poll)

    def _quick_poll(self) -> None:
        before = self.snap
        self.poll()
        self._awaiting -= 1
        if self.snap is before and self._awaiting > 0:
            self.set_timer(0.005, self._quick_poll)

    def _command(self, action: Action) -> None:
        self.engine.command(action)
        self._expect_change()
        self.poll()

    def focused_panel(self) -> Panel | None:
        w = self.focused
        while w is not None and not isinstance(w, Panel):
            w = w.parent
        return w

    # --- actions: run control ----------------------------------------------------------------------
    def action_toggle_run(self) -> None:
        if self.gdb_drives():
            return
        snap = self.engine.latest
        if snap.running:
            self.engine.pause()
        elif self.speed == "key":
            self.engine.step_events(1)
        else:
            self.engine.resume()
        self._expect_change()
        self.poll()

    def action_step_instruction(self) -> None:
        if self.gdb_drives():
            return
        self.engine.pause()
        self.engine.step_instruction(self.vcpu)
        self._expect_change()
        self.poll()

    def action_step_event(self) -> None:
        if self.gdb_drives():
            return
        self.engine.pause()
        self.engine.step_events(1)
        self._expect_change()
        self.poll()

    def action_next_apf(self) -> None:
        if self.gdb_drives():
            return
        self.engine.pause()
        self.engine.run_until(EventMatch(kind=list(APF_BREAK_KINDS)), note="reached the next async-PF event")
        self._expect_change()
        self.poll()

    def _apply_speed(self, start: bool = False) -> None:
        s = self.speed
        self.engine.set_speed(None if s in ("full", "key") else float(s))
        if s == "key" and not start and self.engine.latest.running:
            self.engine.pause()

    def action_faster(self) -> None:
        i = SPEEDS.index(self.speed)
        self.speed = SPEEDS[min(i + 1, len(SPEEDS) - 1)]
        self._apply_speed()
        self.poll(force=True)

    def action_slower(self) -> None:
        i = SPEEDS.index(self.speed)
        self.speed = SPEEDS[max(i - 1, 0)]
        self._apply_speed()
        self.poll(force=True)

    # --- actions: host / scenario commands ---------------------------------------------------------
    def action_page_out_selected(self) -> None:
        mem = self.panel("memory")
        if mem.gfn is None:
            self.notify("Select a frame in the host memory map first (7, then arrows).", severity="warning")
            return
        self._command(Action(at=0, do="page_out", gfns=mem.gfn))

    def action_page_out_working(self) -> None:
        self._command(Action(at=0, do="page_out_working", vcpu=self.vcpu))

    def action_page_out_random(self) -> None:
        pool = list(self.engine.pager_frames) or None
        self._command(Action(at=0, do="page_out_random", count=RANDOM_PAGE_OUTS, gfns=pool))

    def action_complete_selected(self) -> None:
        w = self.panel("works").selected_work()
        if w is None:
            self.notify("No work selected: focus the works panel (4) and pick one.", severity="warning")
            return
        if w.wakeup_all or w.state != "paging_in":
            self.notify(f"Work #{w.serial} is already done: KVM delivers it on the vCPU's next entry.")
            return
        self._command(Action(at=0, do="complete", token=w.token, vcpu=w.vcpu))

    def action_complete_oldest(self) -> None:
        self._command(Action(at=0, do="complete_oldest", vcpu=self.vcpu))

    def action_complete_all(self) -> None:
        self._command(Action(at=0, do="complete_all"))

    def action_wake_all(self) -> None:
        self._command(Action(at=0, do="wake_all", vcpu=self.vcpu))

    def action_reset_vcpu(self) -> None:
        self._command(Action(at=0, do="reset_vcpu", vcpu=self.vcpu))

    # --- actions: debugger ------------------------------------------------------------------------
    def selected_code_addr(self, then: str) -> int | None:
        """The address of the line selected in the Code panel; None (after saying why) if there is
        none yet. `then` finishes "select a line, then ..." when the panel had to be shown first."""
        code = self.panel("code")
        if code.display is False or code.ctx is None:
            self.action_focus_panel("code")
            self.notify(f"Code panel shown: select a line, then {then}.")
            return None
        addr = code.selected_addr()
        if addr is None:
            self.notify("Select a line with code in the Code panel first (d, then arrows).", severity="warning")
        return addr

    def action_toggle_breakpoint(self) -> None:
        addr = self.selected_code_addr("b sets a breakpoint there")
        if addr is None:
            return
        self.engine.toggle_breakpoint(addr)
        self._expect_change()
        self.poll()

    def action_toggle_source(self) -> None:
        code = self.panel("code")
        code.source_mode = not code.source_mode
        code._at = None
        if code.display is False:
            self.action_focus_panel("code")
        if code.display and self.snap is not None:   # a view in the new mode (showing it kept the old one)
            code.begin_update()
            code.update_ctx(self._ctx())
            code.flush()

    # --- actions: view ----------------------------------------------------------------------------
    def _set_vcpu(self, v: int) -> None:
        n = len(self.snap.vcpus) if self.snap else 1
        self.vcpu = v % n
        if self.snap is not None:
            self._push(self.snap)
            self._update_status()

    def action_next_vcpu(self) -> None:
        self._set_vcpu(self.vcpu + 1)

    def action_prev_vcpu(self) -> None:
        self._set_vcpu(self.vcpu - 1)

    def action_focus_panel(self, pid: str) -> None:
        if pid in self.hidden:
            self.hidden.discard(pid)
        if self.compact:
            self.compact_panel = pid if pid != "vcpus" else self.compact_panel
        self._relayout()
        p = self.panel(pid)
        p.focus()
        zoomed = p.screen.maximized
        if zoomed is not None and zoomed is not p:   # the zoom follows the focus (else it shows a panel
            p.screen.maximize(p, container=False)    # the layout may have hidden)

    def action_focus_next(self) -> None:
        self._cycle(1)

    def action_focus_previous(self) -> None:
        self._cycle(-1)

    def _cycle(self, d: int) -> None:
        order = [c.PANEL_ID for c in PANELS if c.PANEL_ID not in self.hidden]
        cur = self.focused_panel()
        pid = cur.PANEL_ID if cur is not None else order[0]
        if self.compact and pid == "vcpus":
            pid = self.compact_panel
        i = order.index(pid) if pid in order else 0
        self.action_focus_panel(order[(i + d) % len(order)])

    def action_zoom(self) -> None:
        if self.screen.maximized is not None:
            self.screen.minimize()
            return
        p = self.focused_panel()
        if p is not None:
            self.screen.maximize(p, container=False)

    def action_hide_panel(self) -> None:
        p = self.focused_panel()
        if p is None:
            return
        self.hidden.add(p.PANEL_ID)
        if self.screen.maximized is p:
            self.screen.minimize()
        self._relayout()
        self._cycle(1)

    def action_show_all(self) -> None:
        self.hidden.clear()
        self._relayout()

    def action_panels(self) -> None:
        def done(hidden: set | None) -> None:
            if hidden is not None:
                self.hidden = set(hidden)
                self._relayout()
        self.push_screen(PanelsScreen([(c.PANEL_ID, c.TITLE) for c in PANELS], self.hidden), done)

    def action_filter(self) -> None:
        tl = self.panel("timeline")
        snap = self.snap
        kinds = snap.events.keys() if snap.events is not None else {}

        def done(res) -> None:
            if res is not None:
                tl.set_filter(*res)
        self.push_screen(FilterScreen(kinds, len(snap.vcpus), tl.keys, tl.vcpus), done)

    def action_apf_only(self) -> None:
        tl = self.panel("timeline")
        if tl.filtered:
            tl.set_filter(None, None)
        else:
            tl.set_filter(APF_KINDS, None)
        self._update_status()

    def set_theme(self, name: str) -> None:
        if name.endswith(".toml") or "/" in name:
            th = load_theme_file(name)
            self.register_theme(th)
            if th.name not in self._theme_names:
                self._theme_names.append(th.name)
            name = th.name
        if name not in self.available_themes:
            raise ThemeError(f"unknown theme {name!r}: apfdbg has {', '.join(self._theme_names)} "
                             f"(and Textual's: {', '.join(n for n in self.available_themes if n not in self._theme_names)})")
        self.theme = name

    def action_next_theme(self) -> None:
        names = self._theme_names
        i = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(i + 1) % len(names)]
        self.notify(f"theme: {self.theme}", timeout=1.5)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # --- command palette ------------------------------------------------------------------------------
    def _run_action_now(self, action: str) -> None:
        """Run `name` or `name('arg')` of this app at once (the palette's commands)."""
        import ast
        name, _, rest = action.partition("(")
        args = ast.literal_eval(f"({rest[:-1]},)") if rest else ()
        getattr(self, f"action_{name}")(*args)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for k in bindings.KEYS:
            if k.action == "quit" or (k.action == "tour_next" and not self.tour_steps):
                continue
            yield SystemCommand(f"{k.label} ({k.shown_key.split(',')[0]})", k.help,
                                partial(self._run_action_now, k.action))
        for name in self._theme_names:
            yield SystemCommand(f"theme: {name}", f"Switch to the {name} theme", partial(setattr, self, "theme", name))
