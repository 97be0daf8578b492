"""Benchmark 8: what the debugger costs.

* free run of the `mem` loop with a breakpoint set where the loop never goes, and with a write
  watchpoint on a page the loop never touches, each divided by the plain run's speed (the
  breakpoint hook is translated into its one address only; the watchpoint installs the per-
  instruction C hook that makes its stops exact);
* single steps (VCpu.step) per second on the same loop;
* the stepping commands on the reference kernel (tests/gdb/apf_small.toml) stopped in pf_handler:
  step over a call, step out of pf_handler, one source line, in milliseconds of wall time.

Best of 3, 1 vCPU for the loop numbers.
"""
from __future__ import annotations

import time

import common as C

from apfdbg.debug.debuginfo import line_table
from apfdbg.engine import Engine
from apfdbg.machine.debug import Debugger
from apfdbg.machine.image import load_image
from apfdbg.scenario import load_scenario

ITERS = 400_000
STEPS = 20_000
TARGET_BREAKPOINT_RATIO = 0.9
TARGET_STEP_US = 100.0


def loop_speed(setup=None) -> float:
    best = 0.0
    for _ in range(3):
        m = C.machine("mem", ITERS)
        d = Debugger(m)
        if setup:
            setup(m, d)
        r, dt = C.timed_run(m)
        best = max(best, r.instructions / dt)
        m.close()
    return best


def step_us() -> float:
    m = C.machine("mem", ITERS)
    v = m.vcpus[0]
    m.step(until=10_000)
    t0 = time.perf_counter()
    for _ in range(STEPS):
        v.step()
    dt = time.perf_counter() - t0
    m.close()
    return dt / STEPS * 1e6


def stepping_ms() -> dict[str, float]:
    sc = load_scenario(C.ROOT / "tests" / "gdb" / "apf_small.toml")
    out: dict[str, float] = {}
    for mode in ("over", "out", "line"):
        best = float("inf")
        for _ in range(3):
            e = Engine(load_image(C.ROOT / "guests" / "refkernel" / "refkernel.elf"), sc)
            e.add_point("trap_dispatch" if mode == "over" else "pf_handler")
            e.resume()
            e.pump()
            v = int(e.latest.stop_reason.rsplit("vCPU ", 1)[1])
            e.remove_point(1)
            line_table(e.image)  # DWARF is parsed once per image (~0.1 s); not a step's cost
            if mode == "over":  # to the first call of trap_dispatch
                from apfdbg.debug.stepping import insn_at, kind_of
                while kind_of(insn_at(e.machine.vcpus[v])[1]) != "call":
                    e.step(v, "into")
            t0 = time.perf_counter()
            e.step(v, mode)
            e.pump()
            best = min(best, time.perf_counter() - t0)
        out[mode] = best * 1e3
    return out


def main() -> None:
    a = C.args(__doc__.splitlines()[0])
    plain = loop_speed()
    with_bp = loop_speed(lambda m, d: d.add_breakpoint(0x10))
    with_wp = loop_speed(lambda m, d: d.add_watchpoint(0x900000, 8, "write"))
    ms = stepping_ms()
    results = [
        C.info("mem loop, plain", plain / 1e6, "M insn/s"),
        C.check("mem loop with a breakpoint elsewhere / plain", with_bp / plain, "x", ">=", TARGET_BREAKPOINT_RATIO),
        C.info("mem loop with a watchpoint elsewhere / plain", with_wp / plain, "x"),
        C.check("single step (VCpu.step)", step_us(), "us", "<=", TARGET_STEP_US),
        C.info("step over a call (refkernel, trap_dispatch)", ms["over"], "ms"),
        C.info("step out of pf_handler (refkernel)", ms["out"], "ms"),
        C.info("source line step in pf_handler (refkernel)", ms["line"], "ms"),
    ]
    C.finish(results, a.json)


if __name__ == "__main__":
    main()
