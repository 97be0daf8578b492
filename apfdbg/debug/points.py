"""What a user types to stop the guest, parsed: breakpoints, watchpoints and event breakpoints.

    [break] LOCATION [vcpu N] [if CONDITION]     LOCATION: 0xADDR, symbol, symbol+off, file.c:LINE
    watch|rwatch|awatch ADDRESS [SIZE] [vcpu N]  write / read / read-or-write (gdb's names)
    catch apf [not-present|ready] [token=T] [gfn=G] [vcpu N]
    catch msr [INDEX] [vcpu N]  ·  catch gp  ·  catch pf  ·  catch halt  ·  catch triple-fault
    catch event KIND [field=value ...] [vcpu N]  any event kind of docs/trace.md

The TUI's breakpoint dialog, the scenario file and the tests all go through `parse_point`, so
each form means the same everywhere.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Literal

from ..machine.debug import ConditionError, compile_expr
from ..scenario import EventMatch
from .debuginfo import line_table


class PointError(ValueError):
    pass


@dataclass(frozen=True)
class PointSpec:
    kind: Literal["break", "watch", "catch"]
    label: str                          # what the user asked for, in canonical words
    addr: int | None = None             # break / watch
    more: tuple = ()                    # break at file:line: the line's other locations (inlined copies)
    size: int = 1                       # watch
    access: str = "write"               # watch: write, read, access
    vcpu: int | None = None
    condition: str | None = None        # break
    match: EventMatch | None = None     # catch


MSR_NAMES = {
    "kvm_asyncpf_en": 0x4B564D02, "async_pf_en": 0x4B564D02, "async_pf": 0x4B564D02,
    "async_pf_int": 0x4B564D06, "async_pf_ack": 0x4B564D07,
    "system_time": 0x4B564D01, "wall_clock": 0x4B564D00, "steal_time": 0x4B564D03,
    "pv_eoi": 0x4B564D04, "efer": 0xC0000080, "lstar": 0xC0000082, "star": 0xC0000081,
}
CATCH_FORMS = ("apf", "msr", "gp", "pf", "halt", "triple-fault", "event")


def _int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise PointError(f"{what}: {text!r} is not a number (0x1f, 31)") from None


def _take_vcpu(words: list[str], nvcpus: int) -> int | None:
    """Remove a trailing `vcpu N` (or `vcpu all`) from `words`."""
    for i, w in enumerate(words):
        if w.lower() in ("vcpu", "thread", "cpu"):
            if i + 1 >= len(words):
                raise PointError("vcpu: which one? (vcpu 0, vcpu all)")
            arg = words[i + 1]
            del words[i:i + 2]
            if arg.lower() == "all":
                return None
            n = _int(arg, "vcpu")
            if not 0 <= n < nvcpus:
                raise PointError(f"vcpu {n}: the machine has vCPUs 0..{nvcpus - 1}")
            return n
    return None


def address_of(text: str, image) -> tuple[int, str]:
    """LOCATION -> (address, canonical label)."""
    text = text.strip().lstrip("*")
    m = re.fullmatch(r"(.+?):(\d+)", text)
    if m and not text.startswith("0x"):
        hit = line_table(image).resolve(m.group(1), int(m.group(2)))
        if hit is None:
            known = sorted({f.rsplit("/", 1)[-1] for f in line_table(image).files()})
            raise PointError(f"{text}: no code at or after that line"
                             + (f" (files with line info: {', '.join(known)})" if known else
                                " (the image has no DWARF line info)"))
        (path, line), addr = hit
        return addr, f"{path.rsplit('/', 1)[-1]}:{line}"

    def names(n: str) -> int | None:
        sym = image.symbol(n)
        return sym.addr if sym is not None else None
    try:
        expr = compile_expr(text, names)
    except ConditionError as e:
        raise PointError(str(e)) from None
    try:
        addr = expr(_NoCpu()) & (2**64 - 1)
    except _NeedsCpu:
        raise PointError(f"{text}: a location cannot use registers or memory") from None
    return addr, text


class _NeedsCpu(Exception):
    pass


class _NoCpu:
    def reg(self, _rid):
        raise _NeedsCpu

    def peek(self, _va, _size):
        raise _NeedsCpu


def parse_point(text: str, image, nvcpus: int = 1, vcpu: int | None = None) -> PointSpec:
    """Parse one line of the point syntax above (raises PointError with a message for the user).
    `vcpu` is the default when the text names none."""
    text = text.strip()
    if not text:
        raise PointError("empty: try 'pf_handler', 'trap.c:107 if cr2 == 1', 'watch apf_reason_area 4', "
                         "'catch apf not-present'")
    cond = None
    m = re.search(r"\s+if\s+(.+)$", text)
    if m:
        cond, text = m.group(1).strip(), text[:m.start()].strip()
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise PointError(f"{text!r}: {e}") from None
    if not words:
        raise PointError("a location is missing")
    head = words[0].lower()
    has_vcpu = any(w.lower() in ("vcpu", "thread", "cpu") for w in words)
    which = _take_vcpu(words, nvcpus)
    if not has_vcpu:
        which = vcpu
    if head in ("watch", "rwatch", "awatch"):
        access = {"watch": "write", "rwatch": "read", "awatch": "access"}[head]
        rest = words[1:]
        for w in list(rest):
            if w.lower() in ("read", "write", "access"):
                access = w.lower()
                rest.remove(w)
        if not rest or len(rest) > 2:
            raise PointError(f"{head} ADDRESS [SIZE]: e.g. '{head} apf_reason_area 4'")
        addr, label = address_of(rest[0], image)
        size = _int(rest[1], "size") if len(rest) > 1 else 8
        if not 1 <= size <= 1 << 20:
            raise PointError(f"size {size}: 1 byte to 1 MiB")
        if addr + size > 1 << 64:
            raise PointError(f"{label} + {size}: the range goes past the top of the address space")
        if cond:
            raise PointError("a watchpoint takes no condition (use a conditional breakpoint)")
        return PointSpec("watch", f"{access} {label}" + (f" [{size}]" if size != 8 else ""),
                         addr=addr, size=size, access=access, vcpu=which)
    if head == "catch":
        if cond:
            raise PointError("a catchpoint takes no 'if' (filter with field=value)")
        return _catch(words[1:], which)
    if head in ("break", "b", "tbreak"):
        words = words[1:]
    if len(words) != 1:
        raise PointError(f"{' '.join(words) or text!r}: one location (0xADDR, symbol, symbol+off, file.c:LINE)")
    addr, label = address_of(words[0], image)
    more: tuple = ()
    m = re.fullmatch(r"(.+?):(\d+)", words[0].lstrip("*"))
    if m and not words[0].startswith("0x"):
        def function_of(a: int):
            hit = image.lookup(a)
            return hit[0].name if hit is not None else None
        found = line_table(image).locations(m.group(1), int(m.group(2)), function_of)
        if found is not None and found[1]:
            addr, more = found[1][0], tuple(found[1][1:])
    if cond:
        def names(n: str) -> int | None:
            sym = image.symbol(n)
            return sym.addr if sym is not None else None
        try:
            compile_expr(cond, names)
        except ConditionError as e:
            raise PointError(f"condition {e}") from None
    return PointSpec("break", label, addr=addr, vcpu=which, condition=cond, more=more)


def _filters(words: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for w in words:
        if "=" not in w:
            raise PointError(f"{w!r}: filters are field=value (token=0x1, gfn=0x2a)")
        k, v = w.split("=", 1)
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", k):
            raise PointError(f"{k!r} is not a field name")
        if v == "*":
            out[k] = "*"
        elif v.lower() in ("true", "false"):
            out[k] = v.lower() == "true"
        else:
            try:
                out[k] = int(v, 0)
            except ValueError:
                out[k] = v
    return out


def _catch(words: list[str], vcpu: int | None) -> PointSpec:
    if not words:
        raise PointError("catch what? " + ", ".join(CATCH_FORMS))
    what, rest = words[0].lower(), words[1:]
    if what == "apf":
        kinds = ["async_pf_not_present", "async_pf_ready"]
        label = "apf"
        if rest and rest[0].lower() in ("not-present", "notpresent", "np", "ready", "any", "page-ready"):
            sel = rest.pop(0).lower()
            if sel in ("not-present", "notpresent", "np"):
                kinds, label = ["async_pf_not_present"], "apf not-present"
            elif sel in ("ready", "page-ready"):
                kinds, label = ["async_pf_ready"], "apf ready"
        where = _filters(rest)
        for k in where:
            if k not in ("token", "gfn", "gva", "work", "slot", "delivery", "wakeup_all", "delivered_token"):
                raise PointError(f"catch apf: no field {k!r} (token, gfn, gva, work, slot)")
        label += "".join(f" {k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool) else f" {k}={v}"
                         for k, v in where.items())
        return PointSpec("catch", label, vcpu=vcpu, match=EventMatch(kind=kinds, where=where))
    if what == "msr":
        where: dict[str, Any] = {}
        label = "msr write"
        if rest:
            arg = rest.pop(0)
            idx = MSR_NAMES.get(arg.lower())
            idx = idx if idx is not None else _int(arg, "msr")
            where["index"] = idx
            label += f" {arg if arg.lower() in MSR_NAMES else hex(idx)}"
        if rest:
            raise PointError(f"catch msr [INDEX]: unexpected {' '.join(rest)!r}")
        return PointSpec("catch", label, vcpu=vcpu, match=EventMatch(kind="msr_write", where=where))
    simple = {"gp": ("inject:#GP", "#GP"), "pf": ("inject:#PF", "#PF"),
              "halt": (["hlt", "halt"], "halt"), "hlt": (["hlt", "halt"], "halt"),
              "triple-fault": ("triple_fault", "triple fault"), "triple_fault": ("triple_fault", "triple fault"),
              "shutdown": ("triple_fault", "triple fault")}
    if what in simple:
        kind, label = simple[what]
        where = _filters(rest)
        return PointSpec("catch", label + "".join(f" {k}={v}" for k, v in where.items()), vcpu=vcpu,
                         match=EventMatch(kind=kind, where=where))
    if what == "event":
        if not rest:
            raise PointError("catch event KIND [field=value ...]: e.g. 'catch event wakeup_all'")
        kind = rest.pop(0)
        from ..events import event_kinds
        if kind not in event_kinds() and not kind.startswith("inject:"):
            raise PointError(f"no event kind {kind!r} (docs/trace.md lists them)")
        where = _filters(rest)
        return PointSpec("catch", f"event {kind}" + "".join(f" {k}={v}" for k, v in where.items()),
                         vcpu=vcpu, match=EventMatch(kind=kind, where=where))
    raise PointError(f"catch {what!r}? one of: " + ", ".join(CATCH_FORMS))


def set_point(dbg, spec: PointSpec, image) -> str:
    """Install `spec` in a Debugger; returns what was set, in words (the engine and the gdb stub)."""
    def names(n: str) -> int | None:
        sym = image.symbol(n)
        return sym.addr if sym is not None else None
    on = "every vCPU" if spec.vcpu is None else f"vCPU {spec.vcpu}"
    if spec.kind == "break":
        bps = [dbg.add_breakpoint(a, spec.vcpu, spec.condition, label=spec.label, names=names)
               for a in (spec.addr, *spec.more)]
        cond = f" if {spec.condition}" if spec.condition else ""
        if len(bps) > 1:
            where = ", ".join(f"{b.id} at {image.describe(b.addr)}" for b in bps)
            return f"breakpoints {where}: {spec.label} ({len(bps)} locations){cond}, {on}"
        return f"breakpoint {bps[0].id} at {spec.label} ({spec.addr:#x}){cond}, {on}"
    if spec.kind == "watch":
        wp = dbg.add_watchpoint(spec.addr, spec.size, spec.access, spec.vcpu, label=spec.label)
        return f"watchpoint {wp.id}: {spec.label} ({spec.addr:#x}, {spec.size} bytes), {on}"
    cp = dbg.add_catchpoint(spec.match.matches, spec.label, spec.vcpu)
    return f"catchpoint {cp.id}: {spec.label}, {on}"


def describe_points(dbg, image) -> list[str]:
    """One line per point of a Debugger (temporary stepping breakpoints left out)."""
    rows = []
    for b in dbg.breakpoints.values():
        if not b.temporary:
            rows.append((b.id, f"break  {b.label or image.describe(b.addr)} ({b.addr:#x})"
                         + (f" if {b.condition}" if b.condition else ""), b.vcpu, b.hits))
    for w in dbg.watchpoints.values():
        rows.append((w.id, f"watch  {w.label or f'{w.kind} {w.addr:#x} [{w.size}]'}", w.vcpu, w.hits))
    for c in dbg.catchpoints.values():
        rows.append((c.id, f"catch  {c.label}", c.vcpu, c.hits))
    return [f"{i:>3}  {text}  ({'all vCPUs' if v is None else f'vCPU {v}'}, {h} hit{'s' if h != 1 else ''})"
            for i, text, v, h in sorted(rows)]
