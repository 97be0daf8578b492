"""The base every apfdbg event shares, and the events more than one layer emits.

The machine and the KVM model each define their own event classes on this base; neither knows the
other, and `apfdbg.events` joins them into the one trace schema.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Event(BaseModel):
    """When (virtual time), which vCPU (None: machine-wide), what kind."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    time: int
    vcpu: int | None
    kind: str


class MsrWrite(Event):
    """Every WRMSR the guest executes, whoever handles it."""
    kind: Literal["msr_write"] = "msr_write"
    index: int
    value: int
    result: Literal["ok", "gp"]  # "gp": the write raised #GP(0)
    handler: str                 # "arch" (Unicorn's CPU), "apic", "kvm", "none"
    reason: str = ""             # what happened, or why it failed


class MsrRead(Event):
    kind: Literal["msr_read"] = "msr_read"
    index: int
    value: int
    result: Literal["ok", "gp"] = "ok"
    handler: str
    reason: str = ""
