"""Scenarios: a TOML file that fixes everything a run depends on, so a demo or a bug report replays.

Validation errors name the line of the TOML file and the field.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .events import event_key
from .host.pager import AutoPagerConfig, FixedLatency, Latency
from .machine.config import MachineConfig


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: The most frames a gfn list may name: every frame of the largest guest RAM (MachineConfig.ram_mib).
MAX_GFNS = 4096 * 256


def parse_gfns(spec: str | int | list) -> list[int]:
    """`0x200`, `0x200-0x20f` (inclusive), `[0x200, "0x300-0x301"]`; at most MAX_GFNS of them."""
    out: list[int] = []
    _add_gfns(spec, out)
    return out


def _add_gfns(spec: str | int | list, out: list[int]) -> None:
    if isinstance(spec, list):
        for part in spec:
            _add_gfns(part, out)
    elif isinstance(spec, int):
        _add_range(spec, spec, out)
    else:
        for part in str(spec).split(","):
            part = part.strip()
            m = re.fullmatch(r"(\w+)\s*-\s*(\w+)", part)
            if m:
                lo, hi = int(m.group(1), 0), int(m.group(2), 0)
                if hi < lo:
                    raise ValueError(f"range {part!r} ends before it starts")
                _add_range(lo, hi, out)
            else:
                _add_range(int(part, 0), int(part, 0), out)


def _add_range(lo: int, hi: int, out: list[int]) -> None:
    if lo < 0:
        raise ValueError(f"gfn {lo:#x} is negative")
    if len(out) + (hi - lo + 1) > MAX_GFNS:  # checked before the list is built
        raise ValueError(f"more than {MAX_GFNS:,} frames (all of {MAX_GFNS // 256} MiB of guest RAM)")
    out.extend(range(lo, hi + 1))


class HostSection(_M):
    profile: Literal["seed", "2.6.38", "6.18"] = "seed"
    seed: int = 0


class AutoSection(_M):
    frames: str | list = Field(description="gfns the pager may swap out, e.g. '0x400-0x4ff'")
    budget: int = Field(ge=0)
    period: int = Field(10_000, ge=1)
    policy: Literal["lru", "fifo", "random"] = "lru"
    until: int | None = Field(None, ge=0, description="stop paging out at this virtual time")

    @field_validator("frames")
    @classmethod
    def _frames(cls, v):
        parse_gfns(v)
        return v

    def config(self) -> AutoPagerConfig:
        gfns = sorted(set(parse_gfns(self.frames)))
        return AutoPagerConfig(frames=[(g, g) for g in gfns], budget=self.budget, period=self.period,
                               policy=self.policy, until=self.until)


class PagerSection(_M):
    latency: Latency = Field(default_factory=FixedLatency)
    auto: AutoSection | None = None


ActionKind = Literal["page_out", "page_out_random", "complete", "complete_oldest", "complete_all",
                     "wake_all", "reset_vcpu", "page_in", "page_out_working"]


class Action(_M):
    at: int = Field(ge=0, description="virtual time (instructions)")
    do: ActionKind
    vcpu: int | None = None
    gfns: str | int | list | None = None
    token: int | None = None
    count: int = Field(1, ge=1)
    every: int | None = Field(None, ge=1, description="repeat every N instructions")

    @model_validator(mode="after")
    def _needs(self):
        if self.do in ("page_out", "page_in") and self.gfns is None:
            raise ValueError(f"{self.do} needs gfns")
        if self.do in ("wake_all", "reset_vcpu", "complete_oldest", "page_out_working") and self.vcpu is None:
            raise ValueError(f"{self.do} needs vcpu")
        if self.do == "complete" and self.token is None:
            raise ValueError("complete needs token")
        if self.gfns is not None:
            parse_gfns(self.gfns)
        return self


class Expectation(_M):
    event: str
    by: int | None = Field(None, description="count events up to this virtual time")
    vcpu: int | None = None
    count: int | None = None
    min: int | None = None
    max: int | None = None

    def check(self, n: int) -> bool:
        return ((self.count is None or n == self.count) and (self.min is None or n >= self.min)
                and (self.max is None or n <= self.max))

    def describe(self) -> str:
        want = [f"== {self.count}" if self.count is not None else "",
                f">= {self.min}" if self.min is not None else "", f"<= {self.max}" if self.max is not None else ""]
        where = f" on vCPU {self.vcpu}" if self.vcpu is not None else ""
        by = f" by t={self.by}" if self.by is not None else ""
        return f"{self.event}{where}{by} {' and '.join(w for w in want if w) or 'any'}"


class EventMatch(_M):
    """Which event to stop at: its kind (or kinds), optionally its vCPU and field values.

    A field value of "*" matches anything but None and empty lists; any other value must be equal.
    `inject:#PF`-style kinds match injections of that vector.
    """
    kind: str | list[str]
    vcpu: int | None = None
    where: dict[str, Any] = Field(default_factory=dict)

    def kinds(self) -> list[str]:
        return [self.kind] if isinstance(self.kind, str) else list(self.kind)

    def matches(self, e) -> bool:
        kinds = self.kinds()
        if e.kind not in kinds:
            if e.kind != "inject" or not any(k.startswith("inject:") for k in kinds):
                return False
            if event_key(e) not in kinds:
                return False
        if self.vcpu is not None and e.vcpu != self.vcpu:
            return False
        for k, want in self.where.items():
            got = getattr(e, k, None)
            if want == "*":
                if got is None or got == [] or got == ():
                    return False
            elif got != want:
                return False
        return True

    def describe(self) -> str:
        what = " or ".join(self.kinds())
        if self.vcpu is not None:
            what += f" on vCPU {self.vcpu}"
        if self.where:
            what += " with " + ", ".join(f"{k}={'any' if v == '*' else v}" for k, v in self.where.items())
        return what


class TourStep(_M):
    """One stop of a guided tour: run until `until` matches (or not at all), then show the text."""
    title: str
    text: str
    until: EventMatch | None = None
    vcpu: int | None = Field(None, description="switch the UI to this vCPU at the stop")
    focus: str | None = Field(None, description="panel to focus at the stop")


class UiSection(_M):
    """How the TUI starts for this scenario."""
    speed: float | Literal["full", "key"] = Field(4, description="events per second, 'full' or 'key'")
    paused: bool = False
    vcpu: int = 0
    hide: list[str] = Field(default_factory=list, description="panels hidden at start")
    focus: str | None = None


class DebugSection(_M):
    """Points set before the run starts (the TUI, gdb and scripts add more as they go)."""
    points: list[str] = Field(default_factory=list, description="breakpoints, watchpoints, catchpoints "
                              "in the syntax of docs/debugging.md, e.g. 'pf_handler', 'catch apf ready'")
    lock: bool = Field(True, description="stepping freezes the other vCPUs (scheduler-locking)")
    memory: str = Field("reason", description="what the memory panel shows (an expression)")


class Poke(_M):
    """Guest memory the host writes before the first instruction (e.g. a guest's boot parameters)."""
    at: int | str = Field(description="guest physical address, or a symbol of the image")
    u32: list[int] | None = None
    u64: list[int] | None = None
    hex: str | None = Field(None, description="raw bytes as hex digits")

    @model_validator(mode="after")
    def _one(self):
        if sum(x is not None for x in (self.u32, self.u64, self.hex)) != 1:
            raise ValueError("give exactly one of u32, u64, hex")
        if self.hex is not None:
            bytes.fromhex(self.hex)
        for v in (self.u32 or []):
            if not 0 <= v < 1 << 32:
                raise ValueError(f"u32 value {v:#x} out of range")
        for v in (self.u64 or []):
            if not 0 <= v < 1 << 64:
                raise ValueError(f"u64 value {v:#x} out of range")
        return self

    def data(self) -> bytes:
        import struct
        if self.u32 is not None:
            return struct.pack(f"<{len(self.u32)}I", *self.u32)
        if self.u64 is not None:
            return struct.pack(f"<{len(self.u64)}Q", *self.u64)
        return bytes.fromhex(self.hex or "")


class Scenario(_M):
    name: str = ""
    description: str = ""
    image: str | None = Field(None, description="guest image, relative to the scenario file")
    machine: MachineConfig = Field(default_factory=MachineConfig)
    host: HostSection = Field(default_factory=HostSection)
    pager: PagerSection = Field(default_factory=PagerSection)
    poke: list[Poke] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=list)
    expect: list[Expectation] = Field(default_factory=list)
    ui: UiSection = Field(default_factory=UiSection)
    debug: DebugSection = Field(default_factory=DebugSection)
    tour: list[TourStep] = Field(default_factory=list)
    base_dir: str = Field("", exclude=True)


class ScenarioError(ValueError):
    pass


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{p}: not valid TOML: {e}") from None
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError("\n".join(f"{p}:{_line_of(text, err['loc'])}: {_loc(err['loc'])}: {err['msg']}"
                                      for err in e.errors())) from None
    sc.base_dir = str(p.resolve().parent)
    return sc


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (("." if out else "") + str(part))
    return out


def _line_of(text: str, loc: tuple) -> int:
    """Best effort: the line where the failing table or key is written."""
    lines = text.splitlines()
    keys = [k for k in loc if isinstance(k, str)]
    index = next((k for k in loc if isinstance(k, int)), None)
    if not keys:
        return 1
    table = keys[0]
    start = 0
    if index is not None:
        hits = [i for i, l in enumerate(lines) if re.match(rf"\s*\[\[\s*{re.escape(table)}\s*\]\]", l)]
        if index < len(hits):
            start = hits[index]
    else:
        for i, l in enumerate(lines):
            if re.match(rf"\s*\[\s*{re.escape(table)}\s*\]", l):
                start = i
                break
    for key in reversed(keys[1:]):
        for i in range(start, len(lines)):
            if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
                return i + 1
    return start + 1
