"""Plain-words explanations of events, each with the rule (kernel function) behind it.

`explain(event, snapshot)` returns an :class:`Explanation`; the Explain panel and the tour show it.
The wording follows docs/async-pf.md and docs/kvm-model.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .fmt import MSR_APF, REASONS, apf_text, msr_name, token_text


@dataclass
class Explanation:
    title: str
    text: str
    rule: str = ""
    notes: list[str] = field(default_factory=list)


def _area(snap: Any, vcpu: int | None) -> str:
    if snap is None or vcpu is None or vcpu >= len(snap.apf):
        return "its reason area"
    a = snap.apf[vcpu]
    return f"{a.area_gpa:#x}" if a.msr_val else "its reason area"


def _halt_cause(snap: Any, vcpu: int) -> str:
    if snap is None:
        return "the host chose the halt path"
    a = snap.apf[vcpu]
    if not a.enabled:
        return "APF is not enabled on this vCPU, so there is nobody to tell"
    if snap.profile is not None and snap.profile.send_always_bit is None:
        return ("the vCPU was in kernel mode (CPL 0) and this profile (seed) only sends async PFs to user "
                "mode")
    return "the vCPU was in kernel mode (CPL 0) and the guest did not set SEND_ALWAYS"


def explain(e: Any, snap: Any = None) -> Explanation:
    k = e.kind
    v = e.vcpu
    who = f"vCPU {v}" if v is not None else "The host"
    f = _EXPLAIN.get(k)
    if f is not None:
        out = f(e, snap, who)
    else:
        from .fmt import event_summary
        out = Explanation(k, f"{who}: {event_summary(e)}.")
    out.notes.append(f"event at t = {e.time:,} (instructions retired machine-wide)")
    return out


def _not_present(e, snap, who):
    slot = f"slot {e.slot}"
    if e.delivery == "pf":
        return Explanation(
            "Page not present: async #PF injected",
            f"{who} touched gfn {e.gfn:#x} (address {e.gva:#x}), which the host has swapped out; "
            f"interrupts are on and APF is enabled, so KVM queued work #{e.work}, wrote reason 1 "
            f"(PAGE_NOT_PRESENT) at {_area(snap, e.vcpu)} and injected #PF with CR2 = token {e.token:#x}. "
            f"The gfn went into {slot} of the vCPU's hash. The guest reads the reason, puts the faulting "
            f"task to sleep on the token and runs another one while the host reads the page back.",
            "kvm_arch_async_page_not_present (x86.c): token = (apf.id++ << 12) | vcpu_id; "
            "kvm_add_async_pf_gfn; apf_put_user(KVM_PV_REASON_PAGE_NOT_PRESENT); kvm_inject_page_fault",
            [f"token {token_text(e.token)}"])
    if e.delivery == "halt":
        return Explanation(
            "Page not present: vCPU halted instead",
            f"{who} touched swapped-out gfn {e.gfn:#x}; KVM queued work #{e.work} (token {e.token:#x}, "
            f"{slot}) but did not inject a #PF: {_halt_cause(snap, e.vcpu)}. The vCPU is halted "
            f"(apf.halted) until the page is in, though it still wakes for interrupts it can take.",
            "kvm_arch_async_page_not_present: !apf enabled || (CPL 0 && !SEND_ALWAYS) -> "
            "KVM_REQ_APF_HALT ('halt vcpu' path)")
    return Explanation(
        "Page not present: reason not written",
        f"{who} touched swapped-out gfn {e.gfn:#x}; KVM queued work #{e.work} but could not write the "
        f"reason (the area is not in guest RAM), so nothing was injected and the vCPU is not halted: "
        f"the access faults again, finds the gfn hashed and becomes a doublefault.",
        "apf_put_user failed in kvm_arch_async_page_not_present")


def _ready(e, snap, who):
    if e.wakeup_all:
        if e.delivered_token is None:
            return Explanation("Wake-all taken, nothing injected",
                               f"On entry to {who}, KVM took wake-all work #{e.work} off the done list but "
                               f"injected nothing (APF is disabled or the reason could not be written).",
                               "kvm_arch_async_page_present")
        return Explanation(
            "Page ready: wake-all",
            f"On entry to {who}, KVM delivered wake-all work #{e.work}: it wrote reason 2 (PAGE_READY) at "
            f"{_area(snap, e.vcpu)} and injected #PF with CR2 = 0xffffffff. The guest wakes every task "
            f"sleeping on this vCPU; no individual page-ready will follow for them. Nothing is deleted from "
            f"the hash (a wake-all has no gfn).",
            "kvm_async_pf_wakeup_all -> kvm_check_async_pf_completion -> kvm_arch_async_page_present "
            "(token ~0)")
    moves = ""
    if e.slot is not None:
        moves = f" KVM deleted gfn {e.gfn:#x} from slot {e.slot} of the hash"
        if e.moves:
            moves += ("; backward-shift deletion then moved " +
                      ", ".join(f"slot {a} to {b}" for a, b in e.moves) +
                      " so that later lookups still find those entries (no tombstones).")
        else:
            moves += "; no entry had to move."
    if e.delivered_token is None:
        why = "APF is disabled" if snap is not None and v_enabled(snap, e.vcpu) is False else \
            "APF was disabled, the reason could not be written, or (2.6.38) its not-present was never injected"
        return Explanation(
            "Page ready, not injected",
            f"On entry to {who}, KVM took done work #{e.work} (gfn {e.gfn:#x}, token {e.token:#x}).{moves} "
            f"It injected nothing: {why}.",
            "kvm_arch_async_page_present")
    return Explanation(
        "Page ready: #PF injected",
        f"On entry to {who}, KVM took the oldest done work #{e.work} (gfn {e.gfn:#x}).{moves} It wrote reason 2 "
        f"(PAGE_READY) at {_area(snap, e.vcpu)} and injected #PF with CR2 = token {e.token:#x}. The guest wakes "
        f"the task sleeping on that token; it retries the access, which now succeeds.",
        "kvm_check_async_pf_completion (one per entry in 2010 kernels) -> kvm_arch_async_page_present: "
        "kvm_del_async_pf_gfn, apf_put_user(KVM_PV_REASON_PAGE_READY), kvm_inject_page_fault",
        [f"token {token_text(e.token)}"])


def v_enabled(snap, vcpu):
    try:
        return snap.apf[vcpu].enabled
    except (AttributeError, IndexError, TypeError):
        return None


def _completed(e, snap, who):
    return Explanation(
        "Page-in finished",
        f"The host finished reading gfn {e.gfn:#x} back for work #{e.work} (token {e.token:#x}, {who}). "
        f"The work moves to the done list; if the vCPU was halted it becomes runnable. 'Page ready' is "
        f"delivered on its next entry, once it can take a #PF (interrupts on).",
        "async_pf_execute -> kvm_async_pf_completed: list_add_tail(&work->link, &vcpu->async_pf.done)")


def _doublefault(e, snap, who):
    return Explanation(
        "Doublefault: vCPU halted",
        f"{who} touched gfn {e.gfn:#x} again while an async PF for it is still outstanding on this vCPU (the "
        f"gfn sits in slot {e.slot} of the hash). KVM does not queue a second work: it halts the vCPU "
        f"(apf.halted) until some page comes in. Typically another task of the same vCPU wanted the same "
        f"page, or the guest retried before 'page ready'.",
        "try_async_pf (mmu.c): kvm_find_async_pf_gfn -> trace_kvm_async_pf_doublefault, KVM_REQ_APF_HALT")


def _sync(e, snap, who):
    if e.reason == "cannot_async":
        text = (f"{who} touched swapped-out gfn {e.gfn:#x} with interrupts off (IF = 0, an interrupt shadow, "
                f"or an event waiting to be injected): KVM cannot inject a #PF now, so it resolves the fault "
                f"synchronously: the whole vCPU stalls until the page is in.")
        rule = "can_do_async_pf: kvm_arch_interrupt_allowed() is false -> synchronous fault"
    elif e.reason == "queue_full":
        text = (f"{who} already has 64 works queued (ASYNC_PF_PER_VCPU): this fault on gfn {e.gfn:#x} is "
                f"resolved synchronously. Its token id was still used up.")
        rule = "kvm_setup_async_pf: vcpu->async_pf.queued >= ASYNC_PF_PER_VCPU"
    else:
        text = f"{who}: the page-ready prefault of gfn {e.gfn:#x} never goes async."
        rule = "kvm_arch_async_page_ready: the prefault is synchronous"
    return Explanation("Synchronous fault: vCPU stalls", text, rule)


def _swapped(e, snap, who):
    return Explanation(
        "Access to a swapped-out frame",
        f"{who}'s {e.access} at {e.gva:#x} (RIP {e.rip:#x}) hit gfn {e.gfn:#x}, which the host has swapped "
        f"out: an EPT violation. KVM now decides: async PF if interrupts are allowed, else a synchronous "
        f"stall.", "tdp_page_fault -> try_async_pf")


def _try(e, snap, who):
    return Explanation(
        "Trying an async PF",
        f"{who} faulted on swapped-out gfn {e.gfn:#x} with interrupts allowed and not as a prefault, so KVM "
        f"may go asynchronous: next it looks the gfn up in the vCPU's hash.",
        "try_async_pf: can_do_async_pf -> trace_kvm_try_async_get_page")


def _msr(e, snap, who):
    name = msr_name(e.index)
    if e.index == MSR_APF:
        prof = snap.profile if snap is not None else None
        fields = apf_text(e.value, prof)
        if e.kind == "msr_read":
            return Explanation("RDMSR MSR_KVM_ASYNC_PF_EN",
                               f"{who} read MSR_KVM_ASYNC_PF_EN = {e.value:#x} ({fields}): KVM returns msr_val.",
                               "kvm_get_msr_common")
        if e.result == "gp":
            return Explanation(
                "WRMSR MSR_KVM_ASYNC_PF_EN: #GP",
                f"{who} wrote {e.value:#x} ({fields}) and the write raised #GP(0): {e.reason}.",
                "kvm_pv_enable_async_pf: reserved bits -> 1 (#GP), nothing stored; GPA not in RAM -> #GP "
                "after msr_val was stored")
        if e.reason == "disabled":
            return Explanation(
                "APF disabled",
                f"{who} wrote {e.value:#x}: the enable bit is clear, so KVM cleared the completion queue "
                f"(outstanding works cancelled, done list freed, queued = 0) and reset the gfn hash. Those "
                f"works will never be delivered: a guest that disables APF with work outstanding must wake "
                f"its sleepers itself, or re-enable (which queues a wake-all).",
                "kvm_pv_enable_async_pf: !(data & KVM_ASYNC_PF_ENABLED) -> "
                "kvm_clear_async_pf_completion_queue, kvm_async_pf_hash_reset")
        return Explanation(
            "APF enabled",
            f"{who} wrote {e.value:#x} to MSR_KVM_ASYNC_PF_EN: {fields}. KVM stored it, checked that the "
            f"64-byte area is guest RAM and queued a wake-all (so any task still waiting from before wakes).",
            "kvm_pv_enable_async_pf: msr_val = data; kvm_gfn_to_hva_cache_init; send_user_only = "
            "!(data & SEND_ALWAYS); kvm_async_pf_wakeup_all")
    op = "wrote" if e.kind == "msr_write" else "read"
    res = "" if e.result == "ok" else f" It raised #GP(0): {e.reason}."
    return Explanation(f"{'WRMSR' if e.kind == 'msr_write' else 'RDMSR'} {name}",
                       f"{who} {op} {name} = {e.value:#x} (handled by {e.handler}).{res}", "")


def _cleared(e, snap, who):
    why = "the guest disabled APF" if e.reason == "msr_disable" else "the vCPU was reset"
    toks = ", ".join(f"{t:#x}" for t in e.cancelled[:8]) + (" ..." if len(e.cancelled) > 8 else "")
    return Explanation(
        "Completion queue cleared",
        f"{why.capitalize()} with {len(e.cancelled)} work(s) still paging in"
        f"{' (tokens ' + toks + ')' if e.cancelled else ''}, {len(e.dropped_done)} done and "
        f"{e.dropped_wakeup_all} wake-all waiting on {who}: all dropped, queued {e.queued_before} -> 0, hash "
        f"emptied. None of them will ever get a 'page ready'.",
        "kvm_clear_async_pf_completion_queue + kvm_async_pf_hash_reset")


def _wakeup_all(e, snap, who):
    if e.queued:
        return Explanation(
            "Wake-all queued",
            f"KVM put wake-all work #{e.work} on {who}'s done list (queued + 1). Delivered on the next entry "
            f"that can take a #PF: reason 2 with token 0xffffffff wakes every sleeper.",
            "kvm_async_pf_wakeup_all: only if async_pf.done is empty")
    return Explanation("Wake-all not queued",
                       f"{who}'s done list was not empty, so KVM queued no wake-all (the pending page-readys "
                       f"come first).", "kvm_async_pf_wakeup_all: if (!list_empty_careful(&vcpu->async_pf.done)) return 0")


def _halt(e, snap, who):
    why = ("an async PF it could not inject" if e.reason == "not_present"
           else f"a doublefault on gfn {e.gfn:#x}")
    return Explanation("vCPU halted by the host",
                       f"{who} is halted (apf.halted) after {why}: it does not run until a page it waits for "
                       f"is in (a work reaches the done list) or an interrupt it can take arrives.",
                       "KVM_REQ_APF_HALT -> vcpu->arch.apf.halted = true")


_WAKE = {"completion": "a work reached its done list", "done_pending": "a done work was already waiting",
         "page_ready": "a page-ready was delivered", "interrupt": "an interrupt it can take arrived",
         "reset": "the vCPU was reset"}


def _wake(e, snap, who):
    return Explanation("vCPU runnable again", f"{who} is no longer halted: {_WAKE.get(e.reason, e.reason)}.",
                       "kvm_arch_vcpu_runnable / apf.halted = false")


def _inject(e, snap, who):
    from ..events import vector_name
    if e.vector == 14 and e.source == "host":
        tok = e.cr2
        if tok == 0xFFFFFFFF:
            what = "a wake-all (reason 2, token ~0)"
        else:
            what = f"token {tok:#x}"
        return Explanation("#PF delivered to the guest",
                           f"The #PF KVM injected reached {who}'s IDT: CR2 = {what}; the guest's handler at "
                           f"{e.handler:#x} runs with interrupts off and must read (and zero) the reason "
                           f"before it can take another #PF. It returns to {e.rip:#x}.",
                           "the guest's do_async_page_fault (arch/x86/kernel/kvm.c)")
    name = vector_name(e.vector) if e.vector < 32 else f"vector {e.vector:#x}"
    return Explanation(f"{name} delivered", f"{who} took {name} ({e.source}) at {e.rip:#x}; handler {e.handler:#x}.",
                       "")


def _page_out(e, snap, who):
    return Explanation("Frame swapped out",
                       f"The host swapped gfn {e.gfn:#x} out (its pager, a scenario action or a key). The next "
                       f"access to it by any vCPU exits to the host.", "host memory pressure (the pager)")


def _page_in(e, snap, who):
    return Explanation("Frame back in", f"The host read gfn {e.gfn:#x} back: it is resident again and whoever "
                                        f"waited for it (a work, a stalled vCPU) is released.", "")


def _stall(e, snap, who):
    if e.kind == "stall":
        return Explanation("vCPU stalls", f"{who} waits synchronously for gfn {e.gfn:#x}: it runs nothing until "
                                          f"the page is in.", "synchronous page fault")
    return Explanation("vCPU resumes", f"gfn {e.gfn:#x} is in: {who} runs again.", "")


def _reset(e, snap, who):
    return Explanation("vCPU reset", f"{who}'s APF state was reset: msr_val = 0, completion queue cleared, hash "
                                     f"reset, not halted. apf.id is kept.", "kvm_arch_vcpu_reset")


def _gp(e, snap, who):
    return Explanation("#GP raised", f"{who}: {e.why}", "kvm_set_msr_common returned 1")


def _console(e, snap, who):
    return Explanation("Console", f"{who} printed: {e.text.rstrip()}", "port 0xe9")


def _hlt(e, snap, who):
    if e.interrupts:
        return Explanation("hlt", f"{who} executed hlt with interrupts on: it idles until an event it can take "
                                  f"(a page-ready #PF counts).", "")
    return Explanation("hlt with IF = 0", f"{who} executed hlt with interrupts off: it stops for good.", "")


def _exit(e, snap, who):
    return Explanation("Run ended", f"The guest run ended: status {e.status} ({e.reason}).", "")


_EXPLAIN = {
    "async_pf_not_present": _not_present, "async_pf_ready": _ready, "async_pf_completed": _completed,
    "async_pf_doublefault": _doublefault, "sync_fault": _sync, "swapped_fault": _swapped,
    "try_async_get_page": _try, "msr_write": _msr, "msr_read": _msr, "completion_queue_cleared": _cleared,
    "wakeup_all": _wakeup_all, "halt": _halt, "wake": _wake, "inject": _inject, "page_out": _page_out,
    "page_in": _page_in, "stall": _stall, "unstall": _stall, "vcpu_reset": _reset, "gp": _gp,
    "console": _console, "hlt": _hlt, "exit": _exit,
}


def reason_text(value: int) -> str:
    return f"{value} ({REASONS.get(value, 'unknown')})"
