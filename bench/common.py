"""Helpers shared by the benchmarks in bench/ (see bench/README.md).

Every benchmark script collects `Result`s and ends with `finish(results)`, which prints one line per
result, `name: value unit (target ...) OK|MISS` (or `(info)` for numbers without a target), and
exits with status 1 if any target was missed. `--json` prints the results as JSON instead (used by
run_all.py); `--profile` prints the cProfile top entries of the apfdbg part of the benchmark.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` from anywhere, even without the editable install
    sys.path.insert(0, str(ROOT))

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc  # noqa: E402
from unicorn import x86_const as X  # noqa: E402

from apfdbg.machine.config import MachineConfig  # noqa: E402
from apfdbg.machine.image import Image, load_image  # noqa: E402
from apfdbg.machine.machine import Machine, RunResult  # noqa: E402

GUEST = BENCH / "guests" / "loops.elf"

# Modes of guests/loops.S (keep in sync with its `modes` table).
MODES = {"alu4": 0, "alu32": 1, "mem": 2, "wrmsr": 3, "empty": 4, "cpuid": 5, "cpuidb": 6,
         "int80": 7, "gp": 8, "ud": 9, "touch": 10}
# Instructions per iteration of each loop body (between <name>_loop and <name>_end).
BODY = {"alu4": 4, "alu32": 32, "mem": 9, "wrmsr": 3, "empty": 2, "cpuid": 5, "cpuidb": 4}
# What the guest's setup code leaves in the registers when its loop starts (for raw Unicorn).
RAW_REGS = {
    "alu4": {X.UC_X86_REG_RAX: 0, X.UC_X86_REG_RBX: 0, X.UC_X86_REG_RDX: 3},
    "alu32": {X.UC_X86_REG_RAX: 0, X.UC_X86_REG_RBX: 0, X.UC_X86_REG_RDX: 3, X.UC_X86_REG_R9: 5,
              X.UC_X86_REG_R10: 7, X.UC_X86_REG_R11: 11, X.UC_X86_REG_R12: 0, X.UC_X86_REG_R13: 0},
    "mem": {X.UC_X86_REG_R8: 0x200000, X.UC_X86_REG_RDX: 0, X.UC_X86_REG_RAX: 0, X.UC_X86_REG_RBX: 0},
}
# The loop counter of each loop (the others count in RCX).
COUNTER = {"wrmsr": X.UC_X86_REG_R9, "empty": X.UC_X86_REG_R9, "cpuid": X.UC_X86_REG_R9,
           "cpuidb": X.UC_X86_REG_R9}
RAW_REGS["wrmsr"] = {X.UC_X86_REG_RCX: 0xC0000102, X.UC_X86_REG_RAX: 0, X.UC_X86_REG_RDX: 0}
OK_STATUS = 1  # the guest wrote 0 to port 0xf4

_image: Image | None = None


def image() -> Image:
    global _image
    if _image is None:
        if not GUEST.exists():
            sys.exit(f"{GUEST} is missing: build it with `make -C {GUEST.parent}`")
        _image = load_image(GUEST)
    return _image


def sym(name: str) -> int:
    s = image().symbol(name)
    if s is None:
        raise KeyError(f"{GUEST.name} has no symbol {name!r} (rebuild it: make -C bench/guests)")
    return s.addr


# ---- apfdbg -----------------------------------------------------------------------------------
def machine(mode: str, iters: int = 0, *, vcpus: int = 1, leaf: int = 0, **config) -> Machine:
    """A fresh machine running loop `mode` of the benchmark guest `iters` times on every vCPU."""
    m = Machine(image(), MachineConfig(vcpus=vcpus, **config))
    m.ram.write_u64(sym("mode"), MODES[mode])
    m.ram.write_u64(sym("iters"), iters)
    m.ram.write_u64(sym("leaf"), leaf)
    return m


# ---- timing -----------------------------------------------------------------------------------
# (wall, CPU) seconds of every timed section: wall > CPU means other processes had the cores.
_timings: list[tuple[float, float]] = []


def start_clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def stop_clock(start: tuple[float, float]) -> float:
    """Wall time since `start` (what the benchmarks report); the CPU time is kept for `finish`."""
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    _timings.append((wall, cpu))
    return wall


def timed_run(m: Machine) -> tuple[RunResult, float]:
    """`m.run()` and its wall time in seconds; the guest must end with status 1."""
    t0 = start_clock()
    r = m.run()
    dt = stop_clock(t0)
    if r.status != OK_STATUS:
        raise RuntimeError(f"benchmark guest failed: status {r.status}: {r.reason}")
    return r, dt


def run_loop(mode: str, iters: int, **kw) -> tuple[RunResult, float, dict[str, int]]:
    """A fresh machine running loop `mode`: its result, the wall time of run(), its event counts."""
    m = machine(mode, iters, **kw)
    try:
        r, dt = timed_run(m)
        return r, dt, dict(m.counts)
    finally:
        m.close()


# ---- raw Unicorn ------------------------------------------------------------------------------
def raw_engine(mode: str, iters: int, leaf: int = 0) -> tuple[Uc, int, int]:
    """A plain engine (CPU TLB, no hooks) with the guest's segments mapped where the machine puts
    them and the registers the guest's setup code gives loop `mode`."""
    img = image()
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 16 << 20)
    for seg in img.segments:
        uc.mem_write(seg.paddr, seg.data)
    for reg, val in RAW_REGS.get(mode, {}).items():
        uc.reg_write(reg, val)
    uc.reg_write(X.UC_X86_REG_R10, leaf)
    uc.reg_write(COUNTER.get(mode, X.UC_X86_REG_RCX), iters)
    return uc, sym(f"{mode}_loop"), sym(f"{mode}_end")


def raw_run(mode: str, iters: int, leaf: int = 0) -> tuple[int, float]:
    """Instructions and wall time of `iters` iterations of loop `mode` in raw Unicorn."""
    uc, begin, end = raw_engine(mode, iters, leaf)
    t0 = start_clock()
    uc.emu_start(begin, end)
    dt = stop_clock(t0)
    if uc.reg_read(X.UC_X86_REG_RIP) != end:
        raise RuntimeError(f"raw {mode} loop stopped at {uc.reg_read(X.UC_X86_REG_RIP):#x}")
    return BODY[mode] * iters, dt


def calibrate(fn: Callable[[int], float], seconds: float, start: int = 1000, cap: int = 1 << 40) -> int:
    """The argument n for which fn(n) (a wall time) takes about `seconds`."""
    n = start
    while True:
        dt = fn(n)
        if dt >= seconds / 8 or n >= cap:
            return max(1, min(cap, int(n * seconds / max(dt, 1e-9))))
        n *= 8


def best(fn: Callable[[], float], reps: int = 3) -> float:
    return min(fn() for _ in range(reps))


# ---- results ----------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    value: float
    unit: str
    target: str = ""           # e.g. ">= 0.8"; empty = information only
    ok: bool | None = None     # None = no target

    def line(self) -> str:
        v = self.value
        num = f"{v:#.3g}" if abs(v) < 10 else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}"
        tail = f"(target {self.target}) {'OK' if self.ok else 'MISS'}" if self.ok is not None else "(info)"
        return f"{self.name}: {num} {self.unit} {tail}".replace("  ", " ")


def check(name: str, value: float, unit: str, op: str, limit: float) -> Result:
    ok = {">=": value >= limit, "<=": value <= limit}[op]
    return Result(name, value, unit, f"{op} {limit:g}", ok)


def info(name: str, value: float, unit: str) -> Result:
    return Result(name, value, unit)


def args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print the results as JSON (for run_all.py)")
    p.add_argument("--profile", action="store_true",
                   help="also print the cProfile top entries of the apfdbg runs (to stderr)")
    return p.parse_args()


def profiled(enabled: bool, title: str, fn: Callable[[], object], top: int = 14) -> object:
    """fn(), under cProfile when `enabled` (its top entries by own time go to stderr)."""
    if not enabled:
        return fn()
    pr = cProfile.Profile()
    pr.enable()
    try:
        return fn()
    finally:
        pr.disable()
        out = io.StringIO()
        pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(top)
        root = str(ROOT) + os.sep
        print(f"---- profile: {title} ----\n" + out.getvalue().replace(root, ""), file=sys.stderr)


def finish(results: list[Result], as_json: bool) -> None:
    ratios = sorted(w / c for w, c in _timings if c >= 0.01)
    if ratios:
        results = results + [info("wall/CPU of the timed runs, median (> 1.05: cores were shared)",
                                  ratios[len(ratios) // 2], "x")]
    if as_json:
        print(json.dumps([asdict(r) for r in results]))
    else:
        for r in results:
            print(r.line())
    sys.exit(1 if any(r.ok is False for r in results) else 0)
