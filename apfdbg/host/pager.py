"""Host memory pressure: how long a page-in takes, and an automatic pager that swaps frames out.

All randomness comes from one seeded generator and all time is virtual, so a run repeats exactly.
"""
from __future__ import annotations

import random
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FixedLatency(_Cfg):
    kind: Literal["fixed"] = "fixed"
    instructions: int = Field(20_000, ge=0)


class RandomLatency(_Cfg):
    kind: Literal["random"]
    min: int = Field(ge=0)
    max: int = Field(ge=0)

    @model_validator(mode="after")
    def _order(self):
        if self.max < self.min:
            raise ValueError("max must be >= min")
        return self


class ManualLatency(_Cfg):
    """Page-ins wait until completed by hand (UI key or scenario action)."""
    kind: Literal["manual"]


Latency = Annotated[Union[FixedLatency, RandomLatency, ManualLatency], Field(discriminator="kind")]


def latency_fn(cfg, rng: random.Random):
    if isinstance(cfg, FixedLatency):
        return lambda gfn: cfg.instructions
    if isinstance(cfg, RandomLatency):
        return lambda gfn: rng.randint(cfg.min, cfg.max)
    return lambda gfn: None


class AutoPagerConfig(_Cfg):
    """Keep at most `budget` of the eligible frames resident, checking every `period` instructions."""
    frames: list[tuple[int, int]] = Field(description="eligible gfn ranges, inclusive")
    budget: int = Field(ge=0)
    period: int = Field(10_000, ge=1)
    policy: Literal["lru", "fifo", "random"] = "lru"
    until: int | None = Field(None, ge=0, description="stop paging out at this virtual time")


class AutoPager:
    """Swaps eligible frames out whenever more than `budget` of them are resident.

    `lru` evicts the frame least recently used, as the host sees use: each tick it reads and
    clears the accessed bits of its own mappings (set by the TLB-fill hook; the TLBs are flushed
    so the next access marks a frame again), as Linux ages pages by their accessed bits.
    `fifo` evicts the frame resident longest; `random` picks uniformly with the run's seed.
    """

    def __init__(self, machine, cfg: AutoPagerConfig, rng: random.Random) -> None:
        self.m, self.cfg, self.rng = machine, cfg, rng
        self.eligible = sorted({g for lo, hi in cfg.frames for g in range(lo, hi + 1) if g < machine.ram.frames})
        self._order: dict[int, int] = {g: 0 for g in self.eligible}  # gfn -> time it came in
        self._resident = {g for g in self.eligible if not machine.ram.is_swapped(g)}
        self._last_used: dict[int, int] = {g: 0 for g in self.eligible}
        self._seq = 0
        machine.sinks.append(self._on_event)
        machine.timeline.schedule(machine.now + cfg.period, self._tick)

    def _on_event(self, e) -> None:
        kind = e.kind
        if kind == "page_in" and e.gfn in self._order:
            self._seq += 1
            self._order[e.gfn] = self._seq
            self._resident.add(e.gfn)
        elif kind == "page_out":
            self._resident.discard(e.gfn)

    def _tick(self) -> None:
        if self.cfg.until is not None and self.m.now >= self.cfg.until:
            return  # the pressure is over; frames come back as the guest touches them
        resident = sorted(self._resident)
        if self.cfg.policy == "lru":
            accessed, now = self.m.take_accessed(), self.m.now
            for g in resident:
                if accessed[g]:
                    self._last_used[g] = now
        excess = len(resident) - self.cfg.budget
        if excess > 0:
            if self.cfg.policy == "random":
                victims = self.rng.sample(resident, excess)
            elif self.cfg.policy == "lru":
                victims = sorted(resident, key=lambda g: (self._last_used[g], g))[:excess]
            else:
                victims = sorted(resident, key=lambda g: (self._order[g], g))[:excess]
            self.m.page_out(victims)
        self.m.timeline.schedule(self.m.now + self.cfg.period, self._tick)
