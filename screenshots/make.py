"""Screenshots of the main TUI screens, produced from scenarios (deterministic: the engine runs on this
thread to a virtual time or an event, then the app is shown paused).

    python screenshots/make.py            SVGs here, and PNGs when rsvg-convert is installed
    python screenshots/make.py --no-png

(apt-get install -y librsvg2-bin gives rsvg-convert.)  Textual's SVGs name the font "Fira Code" and
rely on the browser keeping runs of spaces; for the PNGs a copy of each SVG uses DejaVu Sans Mono with
xml:space="preserve", so that librsvg lays the columns out exactly.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from apfdbg.cli import DEFAULT_GUEST, SCENARIOS  # noqa: E402
from apfdbg.engine import Engine  # noqa: E402
from apfdbg.machine.image import load_image  # noqa: E402
from apfdbg.scenario import Action, EventMatch, Scenario, load_scenario  # noqa: E402
from apfdbg.ui.app import ApfApp  # noqa: E402

BENCH_GUEST = ROOT / "guests" / "apfdemo" / "apfdemo-bench.elf"
REFKERNEL = ROOT / "guests" / "refkernel" / "refkernel.elf"
APF_SMALL = ROOT / "tests" / "gdb" / "apf_small.toml"
#: every debugger panel: Code, Registers, Stack, Guest memory, Breakpoints (B opens a dialog: Escape)
DEBUG_KEYS = ["d", "r", "y", "m", "B", "escape"]
EIGHT_VCPUS = """
[machine]
vcpus = 8
[host]
profile = "2.6.38"
[pager]
latency = { kind = "random", min = 3000000, max = 4500000 }
[pager.auto]
frames = "0x400-0x7ff"
budget = 64
period = 50000
"""


def engine(scenario: str = "default.toml", image: Path | None = None) -> Engine:
    if "\n" in scenario:
        sc = Scenario.model_validate(tomllib.loads(scenario))
    else:
        sc = load_scenario(SCENARIOS / scenario)
    return Engine(load_image(image or DEFAULT_GUEST), sc)


def shots() -> list[tuple[str, tuple[int, int], callable, list[str], dict]]:
    """(name, terminal size, engine maker, keys to press, app options)."""
    def default_running():
        e = engine()
        e.run_until(EventMatch(kind="async_pf_doublefault"))
        return e

    def not_present():
        e = engine()
        e.run_until(EventMatch(kind="page_out"))
        return e

    def eight():
        e = engine(EIGHT_VCPUS, BENCH_GUEST)
        e.run_to(6_000_000)
        return e

    def works():
        e = engine(EIGHT_VCPUS, BENCH_GUEST)
        e.run_to(6_000_000)
        e.command(Action(at=0, do="wake_all", vcpu=3))
        return e

    def disabled():
        e = engine()
        e.run_until(EventMatch(kind="msr_write", vcpu=1, where={"reason": "disabled"}))
        return e

    def tour():
        return engine("tour.toml")

    def at_pf_handler():
        """The reference kernel: a catchpoint stops at the first page-ready, then a breakpoint at the
        guest's #PF handler (vCPU 1), with a watchpoint on vCPU 1's reason area."""
        e = Engine(load_image(REFKERNEL), load_scenario(APF_SMALL))
        for points in (["catch apf ready"], ["pf_handler", "watch apf_reason_area+64 4 vcpu 1"]):
            for text in points:
                e.add_point(text)
            e.resume()
            e.pump()
        return e

    return [
        ("main-200x60", (200, 60), default_running, [], {}),
        ("first-async-pf-200x60", (200, 60), not_present, ["n"], {}),
        ("main-80x24", (80, 24), default_running, [], {}),
        ("hash-table-8-vcpus", (200, 60), eight, ["v", "v", "v"], {}),
        ("works-zoomed", (120, 40), works, ["4", "z"], {}),
        ("apf-disabled-explained", (200, 60), disabled, ["n"], {}),
        ("timeline-apf-only", (160, 45), default_running, ["6", "F", "z"], {}),
        ("tour-not-present", (200, 60), tour, ["enter", "enter", "enter"], {"tour": True}),
        ("help", (100, 50), lambda: engine(), ["question_mark"], {}),
        ("debugger-200x60", (200, 60), at_pf_handler, DEBUG_KEYS, {}),
        ("debugger-120x40", (120, 40), at_pf_handler, DEBUG_KEYS, {}),
        ("theme-apf-paper", (200, 60), default_running, [], {"theme": "apf-paper"}),
        ("theme-apf-amber", (160, 45), default_running, [], {"theme": "apf-amber"}),
    ]


async def shoot(name: str, size: tuple[int, int], make, keys: list[str], opts: dict) -> Path:
    eng = make()
    if opts.pop("tour", False):
        opts["tour"] = eng.scenario.tour
    app = ApfApp(eng, threaded=False, paused=True, **opts)
    out = HERE / f"{name}.svg"
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for k in keys:
            await pilot.press(k)
        await pilot.pause()
        app.save_screenshot(filename=out.name, path=str(HERE))
    return out


def to_png(svg: Path, width: int = 2000) -> Path | None:
    rsvg = shutil.which("rsvg-convert")
    if rsvg is None:
        return None
    text = svg.read_text(encoding="utf-8")
    text = text.replace("font-family: Fira Code, monospace;",
                        'font-family: "DejaVu Sans Mono", monospace; letter-spacing: 0.155px;')
    text = text.replace('font-family: "Fira Code";', 'font-family: "DejaVu Sans Mono";')
    text = re.sub(r"<svg ", '<svg xml:space="preserve" ', text, count=1)
    png = svg.with_suffix(".png")
    with tempfile.NamedTemporaryFile("w", suffix=".svg", delete=False, encoding="utf-8") as f:
        f.write(text)
    try:
        subprocess.run([rsvg, "-w", str(width), f.name, "-o", str(png)], check=True)
    finally:
        Path(f.name).unlink()
    return png


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-png", action="store_true")
    p.add_argument("only", nargs="*", help="names of the screenshots to make (default: all)")
    a = p.parse_args()
    if not a.no_png and shutil.which("rsvg-convert") is None:
        print("rsvg-convert not found (apt-get install -y librsvg2-bin): SVGs only", file=sys.stderr)
    for name, size, make, keys, opts in shots():
        if a.only and name not in a.only:
            continue
        svg = asyncio.run(shoot(name, size, make, keys, dict(opts)))
        png = None if a.no_png else to_png(svg)
        print(svg.relative_to(ROOT), "" if png is None else f"+ {png.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
