"""Run a guest to its exit without a UI: console on stdout, a one-line summary, the guest's status."""
from __future__ import annotations

import sys
from typing import IO

from .machine.events import Event
from .machine.machine import Machine, RunResult


def summary(m: Machine, res: RunResult) -> str:
    per = " · ".join(f"vCPU{i} {n:,}" for i, n in enumerate(res.per_vcpu))
    return f"exit status {res.status} ({res.reason}) after {res.instructions:,} instructions: {per}"


def run_headless(m: Machine, out: IO[str] | None = None, max_insns: int | None = None) -> RunResult:
    out = out or sys.stdout
    multi = len(m.vcpus) > 1

    def console(e: Event) -> None:
        if e.kind == "console":
            text = e.text.rstrip("\n")  # type: ignore[attr-defined]
            out.write(f"[vcpu{e.vcpu}] {text}\n" if multi else text + "\n")
            out.flush()

    m.sinks.append(console)
    try:
        res = m.run(max_insns=max_insns)
    finally:
        m.sinks.remove(console)
    out.write(summary(m, res) + "\n")
    return res
