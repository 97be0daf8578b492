"""Host paging through real guests: every access to a swapped-out frame exits with the precise
RIP, gfn and access kind, and the instruction restarts after the page-in."""
from unicorn.x86_const import UC_X86_REG_RSP

from apfdbg.machine.config import MachineConfig
from apfdbg.machine.image import load_image
from apfdbg.machine.machine import Machine


def _machine(path, **cfg):
    m = Machine(load_image(path), MachineConfig(**cfg))
    events = []
    m.sinks.append(events.append)
    return m, events


def test_instruction_fetch_from_swapped_frame_exits_at_entry(guest):
    m, events = _machine(guest("machine/hello"), vcpus=1)
    entry = m.image.entry
    m.page_out(entry >> 12)
    res = m.run(max_insns=1_000_000)
    assert res.status == 1
    first = next(e for e in events if e.kind == "swapped_fault")
    assert (first.gfn, first.access, first.rip, first.gva) == (entry >> 12, "fetch", entry, entry)
    kinds = [e.kind for e in events]
    assert kinds.index("stall") < kinds.index("page_in") < kinds.index("unstall")


def test_stack_write_exit_reports_exact_address_and_restarts(guest):
    """vCPU 0's boot stack frame is swapped out: its first push exits as a write with the exact
    address (RSP - 8), and the push completes after the page-in."""
    m, events = _machine(guest("machine/hello"), vcpus=1)
    top = 0x11000  # docs/guest-abi.md: vCPU 0's boot stack top
    m.page_out((top - 8) >> 12)
    res = m.run(max_insns=2_000_000)
    assert res.status == 1
    f = next(e for e in events if e.kind == "swapped_fault")
    assert (f.access, f.gva, f.gfn) == ("write", top - 8, (top - 8) >> 12)


def test_stack_push_during_interrupt_delivery_exits_to_host(guest):
    """vCPU sleeps in hlt; its stack frame is swapped out; the timer interrupt's frame push exits,
    the vCPU waits for the page, then the interrupt is delivered and the guest passes."""
    m, events = _machine(guest("machine/apic_timer"), vcpus=1)
    v = m.vcpus[0]
    swapped = []

    def on_hlt(e):
        if e.kind == "hlt" and not swapped:
            gfn = (v.uc.reg_read(UC_X86_REG_RSP) - 8) >> 12
            swapped.append(gfn)
            m.page_out(gfn)
    m.sinks.append(on_hlt)
    res = m.run(max_insns=5_000_000)
    assert res.status == 1, res.reason
    gfn = swapped[0]
    kinds = [(e.kind, getattr(e, "gfn", None)) for e in events]
    fault = kinds.index(("swapped_fault", gfn))
    assert kinds.index(("page_in", gfn)) > fault
    inject_after = [i for i, (k, _g) in enumerate(kinds) if k == "inject" and i > fault]
    assert inject_after and inject_after[0] > kinds.index(("page_in", gfn))
    sf = events[fault]
    assert sf.access == "write" and sf.gva >> 12 == gfn


def test_every_vcpu_exits_on_the_same_swapped_frame(guest):
    m, events = _machine(guest("machine/hello"), vcpus=4)
    m.page_in_latency = lambda gfn: 50_000  # long enough for every vCPU to get there
    m.page_out(m.image.entry >> 12)
    assert m.run(max_insns=5_000_000).status == 1
    hit = {e.vcpu for e in events if e.kind == "swapped_fault"}
    assert hit == {0, 1, 2, 3}
