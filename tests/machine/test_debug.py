"""Machine-level debugging: breakpoints (plain and conditional), watchpoints, single steps."""
from unicorn.x86_const import UC_X86_REG_RDI, UC_X86_REG_RIP

from apfdbg.machine.config import MachineConfig
from apfdbg.machine.debug import ConditionError, Debugger
from apfdbg.machine.image import load_image
from apfdbg.machine.machine import Machine

import pytest


def _m(guest, name="machine/hello", **cfg):
    m = Machine(load_image(guest(name)), MachineConfig(**cfg))
    return m, Debugger(m)


def _until_stop(m):
    m.pause_requested = False
    m.debug_stop = None
    while not m.exit_requested and m.debug_stop is None:
        m.pause_requested = False
        m.step()
    return m.debug_stop


def test_breakpoint_stops_every_vcpu_before_the_instruction(guest):
    m, d = _m(guest, vcpus=2)
    entry = m.image.entry
    bp = d.add_breakpoint(entry)
    s1 = _until_stop(m)
    assert (s1.reason, s1.rip, s1.id) == ("breakpoint", entry, bp.id)
    assert m.vcpus[s1.vcpu].retired == 0          # nothing of the vCPU ran yet
    s2 = _until_stop(m)
    assert s2.vcpu != s1.vcpu and s2.rip == entry
    assert m.vcpus[s1.vcpu].retired > 0           # the first one ran on past its breakpoint
    d.remove(bp.id)
    assert _until_stop(m) is None and m.exit_status == 1


def test_conditional_breakpoint(guest):
    m, d = _m(guest, vcpus=3)
    d.add_breakpoint(m.image.entry, condition="rdi == 2 and rsi == 3")
    s = _until_stop(m)
    assert s.vcpu == 2 and m.vcpus[2].reg(UC_X86_REG_RDI) == 2
    assert _until_stop(m) is None and m.exit_status == 1


def test_bad_condition_is_refused_up_front(guest):
    m, d = _m(guest, vcpus=1)
    with pytest.raises(ConditionError):
        d.add_breakpoint(m.image.entry, condition="__import__('os')")


def test_single_step_runs_exactly_one_instruction(guest):
    m, d = _m(guest, vcpus=1)
    v = m.vcpus[0]
    rips = []
    for _ in range(40):
        before = v.retired
        assert v.step() == "instruction"
        assert v.retired == before + 1
        rips.append(v.reg(UC_X86_REG_RIP))
    assert len(set(rips)) > 10
    # stepping is the same execution as running: compare with a fresh machine run 40 instructions
    m2 = Machine(load_image(guest("machine/hello")), MachineConfig(vcpus=1))
    seen = []
    m2.vcpus[0].run(0)  # nothing
    while m2.vcpus[0].retired < 40:
        m2.vcpus[0].step()
        seen.append(m2.vcpus[0].reg(UC_X86_REG_RIP))
    assert seen == rips


def test_step_into_a_software_interrupt_lands_in_its_handler(guest):
    m, d = _m(guest, "machine/exceptions", vcpus=1)
    v = m.vcpus[0]
    int3 = None
    for _ in range(20000):
        code = v.peek(v.rip, 1)
        if code == b"\xcc":
            int3 = v.rip
            break
        v.step()
    assert int3 is not None, "the exceptions guest executes int3"
    v.step()  # the int3 itself
    result = v.step()  # the #BP is delivered: the step stops at the handler
    assert result == "event"
    assert m.counts["inject"] >= 1 and v.rip != int3 + 1


def test_write_watchpoint_stops_after_the_store(guest):
    m, d = _m(guest, "machine/hello", vcpus=1)
    top = 0x11000  # vCPU 0's boot stack top: its first call pushes a return address there
    wp = d.add_watchpoint(top - 8, 8, "write")
    s = _until_stop(m)
    assert s.reason == "watchpoint" and s.address == top - 8 and s.id == wp.id
    v = m.vcpus[0]
    assert v.peek(top - 8, 8) != bytes(8)        # the store happened
    # Exactly after the storing instruction: the guest's first instruction, pushfq (one byte).
    assert v.peek(m.image.entry, 1) == b"\x9c"
    assert s.rip == v.rip == m.image.entry + 1 and v.retired == 1
    retired = v.retired
    assert v.step() == "instruction" and v.retired == retired + 1  # time was exact at the stop
    d.remove(wp.id)
    assert _until_stop(m) is None and m.exit_status == 1


def test_watchpoint_run_gives_the_same_events_and_time(guest):
    def run(watch):
        m = Machine(load_image(guest("machine/hello")), MachineConfig(vcpus=2, quantum=300))
        events = []
        m.sinks.append(lambda e: events.append(e.model_dump_json()))
        d = Debugger(m)
        if watch:
            d.add_watchpoint(0x11000 - 8, 8, "access")
        stops = 0
        while not m.exit_requested:
            m.pause_requested = False
            m.debug_stop = None
            m.step()
            stops += m.debug_stop is not None
        m.finish()
        return events, stops
    plain, _ = run(False)
    watched, stops = run(True)
    # Every event up to the exit is identical; the exit's own time may differ by the `out`
    # instruction's accounting (Unicorn syncs RIP differently in an I/O hook when an instruction
    # hook exists; docs/debugging.md).
    assert stops >= 2 and watched[:-1] == plain[:-1] and run(True) == (watched, stops)


def test_debugged_run_gives_the_same_events(guest):
    def run(with_bp):
        m = Machine(load_image(guest("machine/hello")), MachineConfig(vcpus=2, quantum=300))
        events = []
        m.sinks.append(lambda e: events.append(e.model_dump_json()))
        if with_bp:
            d = Debugger(m)
            d.add_breakpoint(m.image.entry)
        while not m.exit_requested:
            m.pause_requested = False
            m.step()
        m.finish()
        return events
    assert run(False) == run(True)


def test_single_step_after_a_free_run(guest):
    """Unicorn's count hook misses code translated before it: stepping after a run must still
    stop after one instruction."""
    m, d = _m(guest, "machine/memtouch", vcpus=1)
    m.step(until=200_000)
    v = m.vcpus[0]
    for _ in range(5):
        before = v.retired
        assert v.step() == "instruction"
        assert v.retired == before + 1


def test_request_pause_from_another_thread_does_not_change_the_run(guest):
    import threading
    import time

    def run(pausing):
        m = Machine(load_image(guest("machine/memtouch")), MachineConfig(vcpus=2))
        events = []
        m.sinks.append(lambda e: events.append(e.model_dump_json()))
        stop = threading.Event()

        def nag():
            while not stop.is_set():
                time.sleep(0.001)
                m.request_pause()
        t = threading.Thread(target=nag)
        if pausing:
            t.start()
        pauses = 0
        while not m.exit_requested:
            m.pause_requested = False
            m.step()
            pauses += 1
        stop.set()
        if pausing:
            t.join()
        m.finish()
        return events, pauses
    plain, _ = run(False)
    paused, n = run(True)
    assert n > 3 and paused == plain


def test_single_step_over_a_taken_branch_into_a_new_block(guest):
    """A taken branch into a block never entered before: the block hook stops at its entry (to
    install hooks), which must not make the step run a second instruction."""
    m, d = _m(guest, "machine/hello", vcpus=1)
    v = m.vcpus[0]
    for _ in range(300):
        before, rip = v.retired, v.rip
        v.step()
        assert v.retired == before + 1, f"step at {rip:#x} ran {v.retired - before} instructions"
        if m.exit_requested:
            break
