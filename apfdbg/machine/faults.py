"""Exceptions that model what the guest or the host sees when a linear-memory access fails."""
from __future__ import annotations

from dataclasses import dataclass


class AccessFault(Exception):
    """Base of every reason a linear access by the machine itself (delivery, emulation) fails."""


@dataclass
class GuestPageFault(AccessFault):
    """The guest's own page tables forbid it: #PF with this CR2 and error code."""
    va: int
    error_code: int


@dataclass
class HostSwapped(AccessFault):
    """The frame (or a page-table frame on the way) is swapped out by the host."""
    gfn: int
    va: int
    access: str


@dataclass
class NonCanonical(AccessFault):
    va: int


@dataclass
class BadPhysical(AccessFault):
    """The address translates to guest-physical memory that is not RAM."""
    gpa: int
    va: int


@dataclass
class PendingEvent:
    """An event waiting to be delivered through the IDT."""
    vector: int
    source: str  # "exception", "interrupt", "software", "host"
    error_code: int | None = None
    cr2: int | None = None
    insn_rip: tuple[int, int] | None = None  # software interrupts: (addr, size) of the block that ends
    # with the `int`, whose RIP a fault in delivery reports


@dataclass
class GuestException(Exception):
    """Raised by emulation code: deliver this exception to the guest."""
    vector: int
    error_code: int | None = None
    cr2: int | None = None


EXC_DE, EXC_DB, EXC_NMI, EXC_BP, EXC_OF, EXC_BR, EXC_UD, EXC_NM = range(8)
EXC_DF, EXC_TS, EXC_NP, EXC_SS, EXC_GP, EXC_PF = 8, 10, 11, 12, 13, 14
EXC_MF, EXC_AC, EXC_MC, EXC_XM = 16, 17, 18, 19
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
CONTRIBUTORY = frozenset({EXC_DE, EXC_TS, EXC_NP, EXC_SS, EXC_GP})

EXCEPTION_NAMES = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
    10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
    19: "#XM", 20: "#VE", 21: "#CP",
}


def vector_name(v: int) -> str:
    return EXCEPTION_NAMES.get(v, f"vector {v}")
