"""Benchmark 5: resident memory per vCPU.

For 1, 8 and 64 vCPUs, a fresh subprocess builds `Machine(loops.elf, MachineConfig(vcpus=N))`
(16 MiB guest RAM), runs a short alu4 loop on every vCPU (so each engine translates code and
fills its TLB), and reports VmRSS from /proc/self/status after the run (and, for information, how long `Machine(...)` took). The per-vCPU cost is the
slope: (RSS(64) - RSS(1)) / 63 (and (RSS(8) - RSS(1)) / 7 for information).

Target: <= 4 MiB per vCPU (Unicorn's own floor is ~2.7 MiB per engine sharing one mem_map_ptr
RAM, docs/unicorn-notes.md).
"""
from __future__ import annotations

import json
import subprocess
import sys

import common as C

COUNTS = (1, 8, 64)
ITERS = 20_000
TARGET_MIB = 4.0


def rss_kib() -> tuple[int, int]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def child(n: int) -> None:
    C.image()
    base, _ = rss_kib()
    t0 = C.start_clock()
    m = C.machine("alu4", ITERS, vcpus=n)
    build = C.stop_clock(t0)
    r, _ = C.timed_run(m)
    rss, hwm = rss_kib()
    if sum(r.per_vcpu) < n * ITERS * 4:
        raise RuntimeError("not every vCPU ran its loop")
    print(json.dumps({"vcpus": n, "base_kib": base, "rss_kib": rss, "hwm_kib": hwm, "build_s": build}))


def measure(n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(n)], check=True,
                         capture_output=True, text=True, cwd=C.BENCH)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return
    a = C.args(__doc__.splitlines()[0])
    got = {n: measure(n) for n in COUNTS}
    mib = {n: got[n]["rss_kib"] / 1024 for n in COUNTS}
    results = [C.info(f"RSS with {n} vCPU{'s' if n > 1 else ''}", mib[n], "MiB") for n in COUNTS]
    results += [
        C.info("RSS before the machine (Python + imports)", got[1]["base_kib"] / 1024, "MiB"),
        C.info("per vCPU, 1 -> 8", (mib[8] - mib[1]) / 7, "MiB"),
        C.check("per vCPU, 1 -> 64", (mib[64] - mib[1]) / 63, "MiB", "<=", TARGET_MIB),
    ]
    results += [C.info(f"Machine() construction, {n} vCPU{'s' if n > 1 else ''}", got[n]["build_s"] * 1e3, "ms")
                for n in COUNTS]
    if a.profile:
        print("(no profile for the memory benchmark)", file=sys.stderr)
    C.finish(results, a.json)


if __name__ == "__main__":
    main()
