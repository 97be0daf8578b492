"""Typed events the machine reports (the host model adds its own in the same style).

Every event carries the virtual time at which it happened (instructions retired machine-wide) and
the vCPU it concerns (None for machine-wide events).
"""
from __future__ import annotations

from typing import Literal



from ..eventbase import Event, MsrRead, MsrWrite  # noqa: F401  (re-exported)


class Cpuid(Event):
    kind: Literal["cpuid"] = "cpuid"
    leaf: int
    subleaf: int
    eax: int
    ebx: int
    ecx: int
    edx: int


class Inject(Event):
    """An event delivered through the guest's IDT."""
    kind: Literal["inject"] = "inject"
    vector: int
    error_code: int | None = None
    cr2: int | None = None
    source: Literal["exception", "interrupt", "software", "host"]
    rip: int  # where the guest was (the return address on the frame)
    handler: int  # where it went


class DoubleFault(Event):
    kind: Literal["double_fault"] = "double_fault"
    first: int
    second: int


class TripleFault(Event):
    kind: Literal["triple_fault"] = "triple_fault"
    first: int
    second: int
    rip: int


class Hlt(Event):
    """The guest executed hlt (the host's async-PF halt is the host model's `halt`)."""
    kind: Literal["hlt"] = "hlt"
    rip: int
    interrupts: bool  # IF at the hlt: False means the vCPU stops for good


class Resume(Event):
    """A sleeping vCPU (hlt, or halted by the host) runs again because an event was delivered."""
    kind: Literal["resume"] = "resume"
    reason: str


class Console(Event):
    kind: Literal["console"] = "console"
    text: str


class PortIo(Event):
    kind: Literal["io"] = "io"
    port: int
    size: int
    value: int
    direction: Literal["in", "out"]


class SwappedFault(Event):
    """The vCPU touched a frame the host has swapped out (an EPT violation in KVM)."""
    kind: Literal["swapped_fault"] = "swapped_fault"
    gfn: int
    gva: int
    access: Literal["read", "write", "fetch"]
    rip: int


class PageOut(Event):
    kind: Literal["page_out"] = "page_out"
    gfn: int


class PageIn(Event):
    kind: Literal["page_in"] = "page_in"
    gfn: int


class Stall(Event):
    """The vCPU waits synchronously for a swapped-out frame (no async PF possible)."""
    kind: Literal["stall"] = "stall"
    gfn: int


class Unstall(Event):
    kind: Literal["unstall"] = "unstall"
    gfn: int


class BadAccess(Event):
    kind: Literal["bad_access"] = "bad_access"
    gpa: int
    gva: int
    rip: int


class Exit(Event):
    kind: Literal["exit"] = "exit"
    status: int
    reason: str
