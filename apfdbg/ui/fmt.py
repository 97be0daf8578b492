"""Formatting shared by the panels: numbers, MSR names and fields, event one-liners."""
from __future__ import annotations

from typing import Any

MSR_APF = 0x4B564D02

MSR_NAMES = {
    0x10: "TSC", 0x1B: "APIC_BASE", 0x174: "SYSENTER_CS", 0x175: "SYSENTER_ESP",
    0x176: "SYSENTER_EIP", 0x277: "PAT", 0xC0000080: "EFER", 0xC0000081: "STAR",
    0xC0000082: "LSTAR", 0xC0000083: "CSTAR", 0xC0000084: "FMASK", 0xC0000100: "FS_BASE",
    0xC0000101: "GS_BASE", 0xC0000102: "KERNEL_GS_BASE", 0xC0000103: "TSC_AUX",
    0x4B564D00: "KVM_WALL_CLOCK_NEW", 0x4B564D01: "KVM_SYSTEM_TIME_NEW",
    MSR_APF: "KVM_ASYNC_PF_EN", 0x4B564D03: "KVM_STEAL_TIME", 0x4B564D04: "KVM_PV_EOI_EN",
    0x4B564D06: "KVM_ASYNC_PF_INT", 0x4B564D07: "KVM_ASYNC_PF_ACK",
    0x802: "X2APIC_ID", 0x803: "X2APIC_VERSION", 0x808: "X2APIC_TPR", 0x80B: "X2APIC_EOI",
    0x80F: "X2APIC_SVR", 0x830: "X2APIC_ICR", 0x832: "X2APIC_LVT_TIMER", 0x838: "X2APIC_TMICT",
    0x839: "X2APIC_TMCCT", 0x83E: "X2APIC_TDCR", 0x83F: "X2APIC_SELF_IPI",
}

STATE_LABELS = {
    "running": "running",
    "apf-halted": "halted by APF",
    "stalled": "stalled (sync)",
    "idle": "idle in hlt",
    "stopped": "stopped (hlt, IF=0)",
    "shutdown": "shut down",
}

REASONS = {0: "none", 1: "PAGE_NOT_PRESENT", 2: "PAGE_READY"}


def msr_name(index: int) -> str:
    return MSR_NAMES.get(index, f"MSR {index:#x}")


def hx(v: int | None, width: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:#0{width + 2}x}" if width else f"{v:#x}"


def num(n: int) -> str:
    """12345678 -> '12,345,678'."""
    return f"{n:,}"


def short(n: int) -> str:
    """Compact count: 950, 12.3k, 4.56M."""
    a = abs(n)
    if a < 10_000:
        return str(n)
    if a < 1_000_000:
        return f"{n / 1000:.1f}k"
    if a < 1_000_000_000:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e9:.2f}G"


def apf_fields(value: int, profile: Any) -> list[tuple[str, str, bool]]:
    """MSR_KVM_ASYNC_PF_EN decoded: (field, value text, noteworthy)."""
    d = profile.decode_msr(value) if profile is not None else {
        "gpa": value & ~0x3F, "enable_bit": bool(value & 1), "reserved": value & 0x3E}
    out = [("GPA", f"{d['gpa']:#x}", False), ("EN", "1" if d["enable_bit"] else "0", not d["enable_bit"])]
    if "send_always" in d:
        out.append(("SA", "1" if d["send_always"] else "0", False))
    if "delivery_as_int" in d:   # today's protocol: page-ready as an interrupt (needed for "enabled")
        out.append(("INT", "1" if d["delivery_as_int"] else "0", not d["delivery_as_int"]))
        out.append(("VMX", "1" if d["delivery_as_pf_vmexit"] else "0", False))
    out.append(("rsvd", f"{d['reserved']:#x}", bool(d["reserved"])))
    return out


def apf_text(value: int, profile: Any) -> str:
    return " ".join(f"{k}={v}" for k, v, _ in apf_fields(value, profile))


def token_text(token: int | None) -> str:
    """0x3001 -> '0x3001 (id 3, vCPU 1)'; ~0 is the wake-all token."""
    if token is None:
        return "-"
    if token == 0xFFFFFFFF:
        return "0xffffffff (wake-all)"
    return f"{token:#x} (id {token >> 12}, vCPU {token & 0xfff})"


def event_summary(e) -> str:
    """One line of the fields that matter for the event's kind."""
    k = e.kind
    if k == "async_pf_not_present":
        return f"gfn {e.gfn:#x} token {e.token:#x} work #{e.work} slot {e.slot} -> {e.delivery}"
    if k == "async_pf_ready":
        if e.wakeup_all:
            return f"wake-all work #{e.work} delivered {hx(e.delivered_token)}"
        mv = f" moves {' '.join(f'{a}->{b}' for a, b in e.moves)}" if e.moves else ""
        return (f"gfn {hx(e.gfn)} token {e.token:#x} work #{e.work} slot {hx(e.slot) if e.slot is None else e.slot}"
                f" delivered {hx(e.delivered_token)}{mv}")
    if k == "async_pf_completed":
        return f"gfn {e.gfn:#x} token {e.token:#x} work #{e.work}"
    if k in ("try_async_get_page",):
        return f"gfn {e.gfn:#x} gva {e.gva:#x}"
    if k == "async_pf_doublefault":
        return f"gfn {e.gfn:#x} gva {e.gva:#x} (hashed in slot {e.slot})"
    if k == "swapped_fault":
        return f"{e.access} gfn {e.gfn:#x} gva {e.gva:#x} rip {e.rip:#x}"
    if k == "sync_fault":
        return f"gfn {e.gfn:#x} {e.reason}"
    if k in ("stall", "unstall", "page_out", "page_in"):
        return f"gfn {e.gfn:#x}"
    if k in ("msr_write", "msr_read"):
        res = "" if e.result == "ok" else f" #GP: {e.reason}"
        extra = f" ({e.reason})" if e.result == "ok" and e.reason else ""
        return f"{msr_name(e.index)} = {e.value:#x}{extra}{res}"
    if k == "gp":
        return e.why
    if k == "halt":
        tok = f" token {e.token:#x}" if e.token is not None else ""
        return f"{e.reason} gfn {e.gfn:#x}{tok}"
    if k in ("wake", "resume"):
        return e.reason
    if k == "wakeup_all":
        return f"work #{e.work} queued" if e.queued else "not queued (done list not empty)"
    if k == "completion_queue_cleared":
        return (f"{e.reason}: {len(e.cancelled)} cancelled, {len(e.dropped_done)} done dropped, "
                f"queued was {e.queued_before}")
    if k == "inject":
        from ..events import vector_name
        cr2 = f" cr2 {e.cr2:#x}" if e.cr2 is not None else ""
        ec = f" ec {e.error_code:#x}" if e.error_code is not None else ""
        return f"{vector_name(e.vector) if e.vector < 32 else hex(e.vector)} {e.source}{cr2}{ec} rip {e.rip:#x}"
    if k == "console":
        return e.text.rstrip("\n")
    if k == "hlt":
        return f"rip {e.rip:#x} IF={int(e.interrupts)}"
    if k == "cpuid":
        return f"leaf {e.leaf:#x} -> eax {e.eax:#x}"
    if k == "io":
        return f"{e.direction} port {e.port:#x} value {e.value:#x}"
    if k == "exit":
        return f"status {e.status} ({e.reason})"
    if k in ("double_fault", "triple_fault"):
        return f"first {e.first} second {e.second}"
    if k == "bad_access":
        return f"gpa {e.gpa:#x} rip {e.rip:#x}"
    fields = e.model_dump(exclude={"kind", "time", "vcpu"})
    return " ".join(f"{a}={b:#x}" if isinstance(b, int) and not isinstance(b, bool) else f"{a}={b}"
                    for a, b in fields.items())


#: kinds the "APF only" timeline filter keeps
APF_KINDS = frozenset({
    "try_async_get_page", "async_pf_not_present", "async_pf_ready", "async_pf_completed",
    "async_pf_doublefault", "sync_fault", "msr_write", "msr_read", "gp", "halt", "wake", "wakeup_all",
    "completion_queue_cleared", "vcpu_reset", "swapped_fault", "stall", "unstall", "page_out", "page_in",
    "inject:#PF", "exit", "triple_fault", "double_fault", "bad_access",
})

#: kinds that "run until the next APF event" stops at
APF_BREAK_KINDS = ("async_pf_not_present", "async_pf_ready", "async_pf_completed", "async_pf_doublefault",
                   "sync_fault", "wakeup_all", "completion_queue_cleared", "vcpu_reset")


def symbolize(image, value: int) -> tuple[str, bool] | None:
    """`value` as symbol+offset when it points into the image: (text, into code).  Small numbers are not
    addresses (an image's absolute constants would name them), nor is anything outside its segments."""
    if image is None or value < 0x1000:
        return None
    seg = next((s for s in image.segments if s.paddr <= value < s.paddr + max(s.memsz, len(s.data))), None)
    if seg is None:
        return None
    hit = image.lookup(value)
    if hit is None:
        return None
    sym, off = hit
    return (f"{sym.name}+{off:#x}" if off else sym.name), seg.executable
