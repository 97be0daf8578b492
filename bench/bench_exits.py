"""Benchmark 2: the cost of one exit round trip (wrmsr) and of one cpuid (answered in a hook).

* wrmsr: the guest loop `wrmsr MSR_KERNEL_GS_BASE (0xc0000102); dec; jnz` against the same loop
  without the wrmsr (`dec; jnz`), both under apfdbg with 1 vCPU: (t_wrmsr - t_empty) / N is one
  exit: the code hook on the wrmsr stops the engine, the machine emulates it in Python (msr_write
  event), moves RIP and starts the engine again.
* cpuid: `mov leaf, eax; xor ecx, ecx; cpuid; dec; jnz` against the same loop without the cpuid.
  The machine answers cpuid inside a UC_HOOK_INSN callback, without leaving emu_start. Leaf 0:
  the hook lets Unicorn answer (no event); leaf 0x40000000: the machine answers (KVM signature) and
  reports a cpuid event.
* for scale (no target): the same wrmsr and cpuid in raw Unicorn, without hooks.

Best of 5 of each (interleaved with the baseline).
"""
from __future__ import annotations

import common as C

REPS = 5
N_WRMSR = 20_000
N_CPUID = 40_000
TARGET_EXIT_US = 25.0
TARGET_CPUID_US = 5.0
TARGET_CPUID_KVM_US = 25.0


def per_call_us(mode: str, base: str, n: int, event: str | None, **kw) -> float:
    t, t0 = [], []
    for _ in range(REPS):
        _, dt, counts = C.run_loop(mode, n, **kw)
        if event is not None and counts.get(event, 0) != n:
            raise RuntimeError(f"{mode}: expected {n} {event} events, got {counts.get(event, 0)}")
        t.append(dt)
        t0.append(C.run_loop(base, n, **kw)[1])
    return (min(t) - min(t0)) / n * 1e6


def raw_per_call_us(mode: str, base: str, n: int, leaf: int = 0) -> float:
    t = C.best(lambda: C.raw_run(mode, n, leaf)[1])
    t0 = C.best(lambda: C.raw_run(base, n, leaf)[1])
    return (t - t0) / n * 1e6


def main() -> None:
    a = C.args(__doc__.splitlines()[0])
    results = [
        C.check("wrmsr exit round trip", per_call_us("wrmsr", "empty", N_WRMSR, "msr_write"), "us",
                "<=", TARGET_EXIT_US),
        C.check("cpuid leaf 0 (hook, Unicorn answers)",
                per_call_us("cpuid", "cpuidb", N_CPUID, None, leaf=0), "us", "<=", TARGET_CPUID_US),
        C.check("cpuid leaf 0x40000000 (hook, machine answers + event)",
                per_call_us("cpuid", "cpuidb", N_CPUID // 4, "cpuid", leaf=0x40000000), "us",
                "<=", TARGET_CPUID_KVM_US),
        C.info("raw Unicorn wrmsr KERNEL_GS_BASE", raw_per_call_us("wrmsr", "empty", 20_000_000), "us"),
        C.info("raw Unicorn cpuid leaf 0", raw_per_call_us("cpuid", "cpuidb", 5_000_000), "us"),
    ]
    if a.profile:
        C.profiled(True, f"wrmsr loop, {N_WRMSR} exits", lambda: C.run_loop("wrmsr", N_WRMSR))
        C.profiled(True, f"cpuid 0x40000000 loop, {N_CPUID // 4} calls",
                   lambda: C.run_loop("cpuid", N_CPUID // 4, leaf=0x40000000))
    C.finish(results, a.json)


if __name__ == "__main__":
    main()
