"""Benchmark 3: the cost of one event delivery through the guest's IDT.

Unicorn delivers nothing itself: `int n` and every exception leave emu_start through UC_HOOK_INTR
(or UC_HOOK_INSN_INVALID, or the machine's own rdmsr emulation) and the machine delivers the event
in Python (apfdbg/machine/delivery.py: IDT gate, GDT descriptor, stack frame, registers).

* int $0x80: the loop `int $0x80; dec; jnz` with a handler that only does `iretq`, minus the same
  loop without the int (`dec; jnz`): one software interrupt delivered and returned from;
* #GP: `rdmsr` of the unknown MSR 0x12345 (the machine's rdmsr exit raises #GP(0)); the handler
  pops the error code, skips the 2-byte rdmsr and returns: exit + #GP delivery per iteration;
* #UD (no target): `ud2` (UC_HOOK_INSN_INVALID), the handler skips it.

Best of 5 of each (interleaved with the baseline), 1 vCPU.
"""
from __future__ import annotations

import common as C

REPS = 5
N = 5_000
TARGET_INT_US = 50.0
TARGET_GP_US = 75.0


def per_event_us(mode: str) -> float:
    t, t0 = [], []
    for _ in range(REPS):
        _, dt, counts = C.run_loop(mode, N)
        if counts.get("inject", 0) != N:
            raise RuntimeError(f"{mode}: expected {N} deliveries, got {counts.get('inject', 0)}")
        t.append(dt)
        t0.append(C.run_loop("empty", N)[1])
    return (min(t) - min(t0)) / N * 1e6


def main() -> None:
    a = C.args(__doc__.splitlines()[0])
    results = [
        C.check("int $0x80 delivery + iretq", per_event_us("int80"), "us", "<=", TARGET_INT_US),
        C.check("#GP (rdmsr unknown MSR) exit + delivery", per_event_us("gp"), "us", "<=", TARGET_GP_US),
        C.info("#UD (ud2) delivery", per_event_us("ud"), "us"),
    ]
    if a.profile:
        C.profiled(True, f"int $0x80 loop, {N} deliveries", lambda: C.run_loop("int80", N))
    C.finish(results, a.json)


if __name__ == "__main__":
    main()
