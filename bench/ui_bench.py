"""TUI benchmark: frame time, key-press-to-screen latency, guest speed with the UI attached.

    python bench/ui_bench.py            (about 1 minute on 2 cores)
    python bench/ui_bench.py --json     for run_all-style tooling

The set-up the targets are about: 8 vCPUs of the demo guest's benchmark build (72 tasks per vCPU over
1024 pages, page-ins of 2-3 M instructions) so that every vCPU has up to 64 async PFs outstanding,
1,000,000 events in the timeline, and the guest free-running at full speed in the engine thread while
the TUI (200x60, headless driver) redraws from snapshots.

* frame time: one redraw = applying a new snapshot to the panels (`ApfApp._apply`) + Textual's
  layout and compositor pass for it + turning the update into terminal output (the headless driver
  skips that last step; it is timed here by doing it).  Target: median <= 16 ms.
* key latency: from the key press to the first frame that shows its effect: `v` (select the next vCPU:
  UI only) and `a` (wake-all: a command through the engine thread and back in a snapshot).  Target:
  median <= 50 ms, and not growing with run length (measured early and again after more run time).
* guest speed: the same stretch of the run (from the benchmark state to the virtual time a headless
  run reaches in MEASURE_S seconds) with the UI attached and without; the ratio of the wall times.
  Target >= 0.8.
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from common import Result, args, check, finish, info  # noqa: E402

from apfdbg.engine import Engine  # noqa: E402
from apfdbg.machine.image import load_image  # noqa: E402
from apfdbg.scenario import Scenario  # noqa: E402

GUEST = ROOT / "guests" / "apfdemo" / "apfdemo-bench.elf"
SCENARIO = {
    "machine": {"vcpus": 8},
    "host": {"profile": "2.6.38"},
    "pager": {"latency": {"kind": "random", "min": 3_000_000, "max": 4_500_000},
              "auto": {"frames": "0x400-0x7ff", "budget": 64, "period": 50_000}},
    "ui": {"speed": "full"},
}
WARMUP_INSNS = 12_000_000
EVENTS = 1_000_000
SIZE = (200, 60)
MEASURE_S = 6.0


def engine() -> Engine:
    eng = Engine(load_image(GUEST), Scenario.model_validate(SCENARIO))
    eng.run_to(WARMUP_INSNS)
    return eng


def fill_log(eng: Engine, n: int) -> None:
    """Bring the event log to `n` events by replaying the run's own events (the UI's cost depends on how
    many there are, not on where they came from)."""
    real = eng.log.tail(eng.log.total)
    i = 0
    while eng.log.total < n:
        eng.log(real[i % len(real)])
        i += 1


def retired(eng: Engine) -> int:
    return sum(v.retired for v in eng.machine.vcpus)


def headless_run(seconds: float) -> tuple[int, int, float]:
    """From the benchmark state, no UI, engine on this thread, for about `seconds`: (virtual time
    reached, guest instructions retired, wall seconds)."""
    eng = engine()
    fill_log(eng, EVENTS)
    m = eng.machine
    start, t0 = retired(eng), time.perf_counter()
    while time.perf_counter() - t0 < seconds and not m.exit_requested:
        m.pause_requested = False
        m.step(until=m.now + 50_000)
    return m.now, retired(eng) - start, time.perf_counter() - t0


def install_frame_timers():
    """Time Textual's layout + compositor pass and the terminal output of each update."""
    from textual.app import App
    from textual.screen import Screen
    from textual._compositor import CompositorUpdate
    timings: list[float] = []
    frames: list[float] = []   # perf_counter() at the end of each repaint
    orig_update = Screen._on_timer_update
    orig_display = App._display

    def on_timer_update(self):
        t0 = time.perf_counter()
        orig_update(self)
        t1 = time.perf_counter()
        timings.append(t1 - t0)
        frames.append(t1)

    def display(self, screen, renderable):
        if isinstance(renderable, CompositorUpdate) and self.is_headless:
            renderable.render_segments(self.console)  # what a real terminal driver would do
        return orig_display(self, screen, renderable)

    Screen._on_timer_update = on_timer_update
    App._display = display
    return timings, frames


async def measure_ui(eng: Engine, seconds: float, until_time: int) -> dict:
    """The TUI on `eng`: first the guest free-runs from the benchmark state to virtual time
    `until_time` (the point the headless run reached) while frames are timed; then key latencies."""
    from apfdbg.ui.app import ApfApp
    render_times, frame_ends = install_frame_timers()
    app = ApfApp(eng, threaded=True, paused=True, speed="full")
    out: dict = {}
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        a0, r0 = len(app.frame_times), len(render_times)
        start_ret, t0 = retired(eng), time.perf_counter()
        eng.resume()
        queued = []
        while eng.machine.now < until_time and time.perf_counter() - t0 < 20 * seconds:
            await asyncio.sleep(0.01)
            if app.snap is not None and len(queued) < 10_000:
                queued.append(statistics.mean(a.queued for a in app.snap.apf))
        out["wall"] = time.perf_counter() - t0
        out["retired"] = retired(eng) - start_ret
        out["apply"], out["render"] = app.frame_times[a0:], render_times[r0:]
        out["queued"] = statistics.mean(queued) if queued else float("nan")

        async def frames_for(duration: float) -> tuple[list[float], list[float]]:
            a0, r0 = len(app.frame_times), len(render_times)
            await asyncio.sleep(duration)
            return app.frame_times[a0:], render_times[r0:]

        async def latency(key: str, done) -> float:
            from textual import events
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            app.post_message(events.Key(key, key))     # what the terminal driver does on a key press
            while not done():
                await asyncio.sleep(0.0005)
                if time.perf_counter() - t0 > 2:
                    return float("inf")
            n = len(frame_ends)
            while len(frame_ends) == n or frame_ends[-1] < t0:   # the frame that shows it
                await asyncio.sleep(0.0005)
                if time.perf_counter() - t0 > 2:
                    return float("inf")
            return frame_ends[-1] - t0

        async def latencies(rounds: int) -> tuple[list[float], list[float]]:
            ui, cmd = [], []
            for _ in range(rounds):
                want = (app.vcpu + 1) % 8
                ui.append(await latency("v", lambda: app.vcpu == want and
                                        app.query_one("#hash").border_title.endswith(f"vCPU {want}")))
                before = app.snap.commands
                cmd.append(await latency("a", lambda: app.snap.commands > before))
            return ui, cmd

        out["events_at_start"] = app.snap.event_count
        out["lat_ui_early"], out["lat_cmd_early"] = await latencies(15)
        await asyncio.sleep(seconds)          # run longer: latency must not grow with run length
        a2, r2 = await frames_for(2.0)
        out["apply_late"], out["render_late"] = a2, r2
        out["lat_ui_late"], out["lat_cmd_late"] = await latencies(15)
        out["events_at_end"] = app.snap.event_count
        out["time_at_end"] = app.snap.time
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def p95(xs: list[float]) -> float:
    return sorted(xs)[int(0.95 * (len(xs) - 1))] if xs else float("nan")


def main() -> None:
    a = args(__doc__.splitlines()[0])
    until, base_ret, base_wall = headless_run(MEASURE_S)
    eng = engine()
    fill_log(eng, EVENTS)
    ui = asyncio.run(measure_ui(eng, MEASURE_S, until))
    ms = 1000
    results: list[Result] = [
        info("events in the timeline (after the free run)", ui["events_at_start"], "events"),
        info("async PFs outstanding per vCPU during the free run (mean)", ui["queued"], "works"),
        info("snapshot apply (panels), median", med(ui["apply"]) * ms, "ms"),
        info("layout + compositor + output, median", med(ui["render"]) * ms, "ms"),
        check("frame time (apply + render), median", med(ui["apply"]) * ms + med(ui["render"]) * ms, "ms", "<=", 16),
        info("frame time, p95", (p95(ui["apply"]) + p95(ui["render"])) * ms, "ms"),
        info("redraws per second while free-running", len(ui["apply"]) / ui["wall"], "fps"),
        check("key latency, UI key (v), median", med(ui["lat_ui_early"]) * ms, "ms", "<=", 50),
        check("key latency, engine command (a), median", med(ui["lat_cmd_early"]) * ms, "ms", "<=", 50),
        info("key latency, engine command, p95", p95(ui["lat_cmd_early"]) * ms, "ms"),
        info("events in the timeline later", ui["events_at_end"], "events"),
        check("frame time later, median", (med(ui["apply_late"]) + med(ui["render_late"])) * ms, "ms", "<=", 16),
        check("key latency later, UI key, median", med(ui["lat_ui_late"]) * ms, "ms", "<=", 50),
        check("key latency later, engine command, median", med(ui["lat_cmd_late"]) * ms, "ms", "<=", 50),
        info("guest speed, no UI", base_ret / base_wall / 1e6, "M insn/s"),
        info("guest speed, UI attached", ui["retired"] / ui["wall"] / 1e6, "M insn/s"),
        check("guest speed with UI / without (same run, wall time)", base_wall / ui["wall"], "x", ">=", 0.8),
    ]
    finish(results, a.json)


if __name__ == "__main__":
    main()
