"""Benchmark 1: free-run speed of apfdbg's machine against raw Unicorn on the same code.

For each loop of bench/guests/loops.S -- alu4 (4 instructions per iteration, one block), alu32
(32 per iteration) and mem (2 loads + 2 stores over 4 pages, 9 per iteration):

* raw: a plain `Uc` engine, the guest's segments mapped at the same addresses, `emu_start` from
  <loop>_loop to <loop>_end without any hook;
* apfdbg: `Machine(load_image(loops.elf), MachineConfig(vcpus=1)).run()`: setup, the same loop,
  exit through port 0xf4 (instructions from `RunResult.instructions`, wall time of `run()`);
* apfdbg with 4 vCPUs, each running a quarter of the iterations (aggregate rate);
* diagnosis (no target): apfdbg with quantum 10,000,000, i.e. almost no quantum ends, so what is
  left is the cost of the C block hook alone; and the cost of one quantum end in microseconds.

Best of 3 of each, interleaved. Target: apfdbg / raw >= 0.8.
"""
from __future__ import annotations

import common as C

LOOPS = ("alu4", "alu32", "mem")
RAW_SECONDS = 0.2   # iterations are chosen so that the raw run takes about this long
REPS = 3
TARGET = 0.8
BIG_QUANTUM = 10_000_000


def measure(loop: str) -> list[C.Result]:
    n = C.calibrate(lambda k: C.raw_run(loop, k)[1], RAW_SECONDS, start=10_000)
    n -= n % 4
    times: dict[str, list[float]] = {"raw": [], "m1": [], "m4": [], "mq": []}
    insns: dict[str, int] = {}
    for _ in range(REPS):
        i, dt = C.raw_run(loop, n)
        insns["raw"] = i
        times["raw"].append(dt)
        for key, kw in (("m1", dict(vcpus=1)), ("m4", dict(vcpus=4)),
                        ("mq", dict(vcpus=1, quantum=BIG_QUANTUM))):
            iters = n // kw["vcpus"]
            r, dt, _ = C.run_loop(loop, iters, **kw)
            insns[key] = r.instructions
            times[key].append(dt)
    rate = {k: insns[k] / min(times[k]) / 1e6 for k in times}
    quanta = insns["m1"] / 10_000  # MachineConfig's default quantum
    per_quantum_us = (min(times["m1"]) - min(times["mq"])) / quanta * 1e6
    return [
        C.info(f"{loop} raw", rate["raw"], "M insn/s"),
        C.info(f"{loop} apfdbg 1 vCPU", rate["m1"], "M insn/s"),
        C.check(f"{loop} apfdbg/raw 1 vCPU", rate["m1"] / rate["raw"], "x", ">=", TARGET),
        C.info(f"{loop} apfdbg 4 vCPUs (aggregate)", rate["m4"], "M insn/s"),
        C.check(f"{loop} apfdbg/raw 4 vCPUs", rate["m4"] / rate["raw"], "x", ">=", TARGET),
        C.info(f"{loop} apfdbg/raw 1 vCPU, quantum 10M (block hook only)", rate["mq"] / rate["raw"], "x"),
        C.info(f"{loop} cost of one quantum end", per_quantum_us, "us"),
    ]


def main() -> None:
    a = C.args(__doc__.splitlines()[0])
    results: list[C.Result] = []
    for loop in LOOPS:
        results += measure(loop)
    if a.profile:
        C.profiled(True, "alu32, 1 vCPU, default quantum (10,000)",
                   lambda: C.run_loop("alu32", 2_000_000))
    C.finish(results, a.json)


if __name__ == "__main__":
    main()
