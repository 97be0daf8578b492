"""Fixtures for the TUI tests: engines driven synchronously (no engine thread), so every snapshot and
every Pilot test sees exactly the same machine state on every run."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from apfdbg.cli import DEFAULT_GUEST, SCENARIOS
from apfdbg.engine import Engine
from apfdbg.machine.image import load_image
from apfdbg.scenario import EventMatch, Scenario, load_scenario
from apfdbg.ui.app import ApfApp

ROOT = Path(__file__).resolve().parents[2]
BENCH_GUEST = ROOT / "guests" / "apfdemo" / "apfdemo-bench.elf"

#: 8 vCPUs x 72 tasks over 1024 pages, page-ins done by hand: every vCPU fills its 64 slots
FULL_HASH = """
[machine]
vcpus = 8
[host]
profile = "2.6.38"
[pager]
latency = { kind = "fixed", instructions = 50000000 }
[pager.auto]        # evicts nothing (budget = all): its ticks keep virtual time moving in small steps
frames = "0x400-0x7ff"
budget = 1024
period = 100000
[[actions]]
at = 100000
do = "page_out"
gfns = "0x400-0x7ff"
"""

SEED_PROFILE = """
[machine]
vcpus = 2
[host]
profile = "seed"
[pager]
latency = { kind = "fixed", instructions = 30000 }
[pager.auto]
frames = "0x400-0x417"
budget = 10
period = 20000
"""


def make_engine(scenario: str = "default.toml", *, image: Path | None = None, run_to: int | None = None,
                until: EventMatch | dict | None = None) -> Engine:
    """An engine on a bundled scenario (a file name) or TOML text, run on this thread to `run_to` and/or
    to the first event matching `until`."""
    if scenario.endswith(".toml") and "\n" not in scenario:
        sc = load_scenario(SCENARIOS / scenario)
    else:
        import tomllib
        sc = Scenario.model_validate(tomllib.loads(scenario))
    eng = Engine(load_image(image or DEFAULT_GUEST), sc)
    if run_to:
        eng.run_to(run_to)
    if until is not None:
        eng.run_until(until if isinstance(until, EventMatch) else EventMatch(**until))
    return eng


REFKERNEL = ROOT / "guests" / "refkernel" / "refkernel.elf"
APF_SMALL = ROOT / "tests" / "gdb" / "apf_small.toml"


def make_ref_engine(*points: str) -> Engine:
    """The reference kernel (DWARF lines, a #PF handler) under tests/gdb/apf_small.toml; with points, run
    (on this thread) to the first stop they make."""
    eng = Engine(load_image(REFKERNEL), load_scenario(APF_SMALL))
    for text in points:
        eng.add_point(text)
        assert not eng.latest.message.startswith("not set"), eng.latest.message
    if points:
        eng.resume()
        eng.pump()
    return eng


def make_app(engine: Engine, **kw) -> ApfApp:
    kw.setdefault("threaded", False)
    kw.setdefault("paused", True)
    return ApfApp(engine, **kw)


@pytest.fixture
def engine_factory():
    return make_engine


@pytest.fixture
def app_factory():
    return make_app


def screen_text(app) -> str:
    """What the screen shows, as plain text lines (rebuilt from the SVG export of the current frame)."""
    import html
    import re
    svg = app.export_screenshot()
    cells: dict[float, dict[int, str]] = {}
    cw = None
    items = re.findall(r'<text[^>]*? x="([\d.]+)" y="([\d.]+)" textLength="([\d.]+)"[^>]*>([^<]*)</text>', svg)
    for x, y, length, raw in items:
        txt = html.unescape(raw).replace("\xa0", " ")
        if txt and cw is None and len(txt) > 3:
            cw = float(length) / len(txt)
    cw = cw or 12.2
    for x, y, length, raw in items:
        txt = html.unescape(raw).replace("\xa0", " ")
        row = cells.setdefault(float(y), {})
        col = round(float(x) / cw)
        for i, ch in enumerate(txt):
            row[col + i] = ch
    lines = []
    for y in sorted(cells):
        row = cells[y]
        lines.append("".join(row.get(i, " ") for i in range(max(row) + 1)).rstrip() if row else "")
    return "\n".join(lines)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run `async def` tests (Textual's Pilot) with asyncio.run: no async plugin needed."""
    import asyncio
    import inspect
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {a: pyfuncitem.funcargs[a] for a in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(pyfuncitem.obj(**args))
        return True
    return None
