"""Benchmark 6: full async-PF cycles per second, headless.

A cycle is: not-present injected -> the guest sleeps the task -> page-in -> page-ready injected ->
the task resumes. Workload: apfdbg/scenarios/pressure.toml (the reference kernel on 4 vCPUs, a random
pager keeping 48 of 256 task pages resident for the first 10M instructions). Reported:
* cycles per second of wall time for the whole run (guest work included);
* the cost of one cycle: (wall time of the run - wall time of the same guest and instruction
  count without host paging) / cycles.
"""
from __future__ import annotations

import time
from pathlib import Path

import common as C

from apfdbg.engine import Engine
from apfdbg.machine.image import load_image
from apfdbg.scenario import load_scenario

SCENARIO = C.ROOT / "apfdbg" / "scenarios" / "pressure.toml"
TARGET_CYCLES_PER_S = 10_000


def run(paging: bool) -> tuple[float, int, int]:
    sc = load_scenario(SCENARIO)
    if not paging:
        sc = sc.model_copy(update={"pager": sc.pager.model_copy(update={"auto": None})})
    e = Engine(load_image(Path(sc.base_dir) / sc.image), sc)
    limit = None if paging else run.instructions
    t0 = time.perf_counter()
    res = e.run(max_insns=limit)
    dt = time.perf_counter() - t0
    if paging:
        run.instructions = res.instructions
    cycles = sum(1 for x in e.log.events if x.kind == "async_pf_ready" and not x.wakeup_all)
    return dt, cycles, res.instructions


def main() -> None:
    a = C.args(__doc__.splitlines()[0])
    best_with, best_without, cycles = float("inf"), float("inf"), 0
    for _ in range(3):
        dt, cycles, _n = C.profiled(a.profile, "apf cycles", lambda: run(True))
        best_with = min(best_with, dt)
        dt0, _c, _n0 = run(False)
        best_without = min(best_without, dt0)
    per_cycle = (best_with - best_without) / max(cycles, 1)
    results = [
        C.info("apf cycles in the run", cycles, "cycles"),
        C.info("run with paging / without", best_with / best_without, "x"),
        C.check("apf cycles per second (guest work included)", cycles / best_with, "cycles/s",
                ">=", TARGET_CYCLES_PER_S),
        C.info("cost of one apf cycle (host side)", per_cycle * 1e6, "us"),
        C.check("apf cycles per second of host-side cost", 1 / per_cycle, "cycles/s", ">=",
                TARGET_CYCLES_PER_S),
    ]
    C.finish(results, a.json)


if __name__ == "__main__":
    main()
