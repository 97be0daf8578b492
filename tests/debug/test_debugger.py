"""The debugger through the engine's public commands, on the reference kernel under async-PF
pressure: every breakpoint kind, every stepping mode, scheduler locking, register edits and the
memory and stack views. Each test drives the engine synchronously (no engine thread)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from apfdbg.debug.debuginfo import line_table
from apfdbg.engine import Engine
from apfdbg.machine.image import load_image
from apfdbg.scenario import load_scenario
from apfdbg.debug.stepping import insn_at, kind_of

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "tests" / "gdb" / "apf_small.toml"


def refkernel() -> Engine:
    sc = load_scenario(SMALL)
    return Engine(load_image(REPO / "guests" / "refkernel" / "refkernel.elf"), sc)


def machine_guest(name: str) -> Engine:
    return Engine(load_image(REPO / "guests" / "machine" / f"{name}.elf"))


def cont(eng: Engine) -> str:
    eng.resume()
    eng.pump()
    return eng.latest.stop_reason


def step(eng: Engine, vcpu: int, mode: str) -> str:
    eng.step(vcpu, mode)
    eng.pump()
    return eng.latest.stop_reason


def stopped_vcpu(reason: str) -> int:
    return int(re.search(r"vCPU (\d+)", reason).group(1))


def sym(eng: Engine, name: str) -> int:
    return eng.image.symbol(name).addr


def at_pf_handler(eng: Engine, text: str = "pf_handler") -> int:
    eng.add_point(text)
    why = cont(eng)
    assert why.startswith(f"breakpoint 1 at {text.split()[0]} on vCPU"), why
    return stopped_vcpu(why)


# --- breakpoints --------------------------------------------------------------------------------
def test_break_on_a_symbol_stops_inside_the_pf_frame():
    eng = refkernel()
    v = at_pf_handler(eng)
    snap = eng.latest
    assert snap.vcpus[v].rip == sym(eng, "pf_handler")
    frame = snap.stack[v].frame
    inject = [e for e in eng.log.events if e.kind == "inject" and e.vcpu == v][-1]
    assert frame is not None and frame.vector == 14 and frame.name == "#PF"
    assert (frame.rip, frame.error_code, frame.handler) == (inject.rip, inject.error_code, inject.handler)
    assert snap.regs[v]["cr2"] == inject.cr2
    assert [p.label for p in snap.points] == ["pf_handler"] and snap.points[0].hits == 1


def test_break_on_file_and_line_at_every_location():
    eng = refkernel()
    # apf.c:125 is in apf_read_and_reset_reason, which is also inlined into pf_handler
    eng.add_point("apf.c:125")
    msg = eng.latest.message
    assert "apf.c:125 (2 locations)" in msg and "pf_handler+" in msg, msg
    addrs = {b.addr for b in eng.debugger.breakpoints.values()}
    why = cont(eng)
    v = stopped_vcpu(why)
    assert eng.latest.vcpus[v].rip in addrs and "pf_handler" in why
    assert line_table(eng.image).where(eng.latest.vcpus[v].rip)[1] == 125


def test_break_on_one_vcpu_only():
    eng = refkernel()
    eng.add_point("pf_handler vcpu 1")
    for _ in range(3):
        why = cont(eng)
        assert why.startswith("breakpoint 1 at pf_handler on vCPU 1"), why
    assert eng.latest.points[0].vcpu == 1 and eng.latest.points[0].hits == 3


def test_conditional_breakpoint_over_registers_and_memory():
    eng = refkernel()
    area = sym(eng, "apf_reason_area")
    # vCPU 0's async-PF "page not present" (reason 1 in its area, CR2 = a token of vCPU 0)
    eng.add_point(f"pf_handler if u32({area:#x}) == 1 and (cr2 & 0xfff) == 0")
    why = cont(eng)
    assert stopped_vcpu(why) == 0
    snap = eng.latest
    assert snap.regs[0]["cr2"] & 0xFFF == 0
    ev = [e for e in eng.log.events if e.kind == "async_pf_not_present" and e.vcpu == 0][-1]
    assert ev.token == snap.regs[0]["cr2"]


def test_bad_points_are_refused_with_a_reason():
    eng = refkernel()
    for text, words in (("no_such_symbol", "no register or symbol"), ("apf.c:99999", "no code"),
                        ("catch nonsense", "catch 'nonsense'"), ("pf_handler if rax ==", "condition"),
                        ("pf_handler vcpu 7", "vCPUs 0..1")):
        eng.add_point(text)
        assert eng.latest.message.startswith("not set:") and words in eng.latest.message, text
    assert eng.latest.points == ()


def test_watchpoint_on_the_reason_area_stops_right_after_the_guest_reads_it():
    eng = refkernel()
    area = sym(eng, "apf_reason_area")
    eng.add_point(f"rwatch {area + 64:#x} 4 vcpu 1")
    why = cont(eng)
    assert why.startswith("watchpoint 1") and f"access to {area + 64:#x} by vCPU 1" in why, why
    v = eng.machine.vcpus[1]
    # the instruction just executed is the load of area->reason in apf_read_and_reset_reason
    assert eng.image.describe(v.rip).startswith(("apf_read_and_reset_reason", "pf_handler"))
    import capstone
    prev = [i for i in capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64).disasm(
        v.peek(v.rip - 7, 7), v.rip - 7) if i.address + i.size == v.rip]
    assert prev and "0x2bfc80" in prev[-1].op_str     # the load of apf_reason_area[cpu].reason


def test_write_watchpoint_sees_the_guest_reset_the_reason():
    eng = refkernel()
    area = sym(eng, "apf_reason_area")
    eng.add_point(f"watch {area:#x} 4")
    why = cont(eng)
    assert why.startswith("watchpoint 1 (write") and "by vCPU 0" in why, why
    assert eng.machine.ram.read(area, 4) == bytes(4)   # the guest's store of 0 has happened


# --- event breakpoints --------------------------------------------------------------------------
def test_catch_apf_not_present_then_the_ready_for_its_token():
    eng = refkernel()
    eng.add_point("catch apf not-present")
    why = cont(eng)
    assert why.startswith("catchpoint 1: apf not-present"), why
    np_ev = [e for e in eng.log.events if e.kind == "async_pf_not_present"][-1]
    assert eng.log.events[-1] is np_ev or eng.log.events[-1].time == np_ev.time
    eng.remove_point(1)
    eng.add_point(f"catch apf ready token={np_ev.token:#x}")
    why = cont(eng)
    ready = [e for e in eng.log.events if e.kind == "async_pf_ready"][-1]
    assert why.startswith(f"catchpoint 2: apf ready token={np_ev.token:#x}") and ready.token == np_ev.token


def test_catch_apf_for_a_gfn():
    eng = refkernel()
    eng.add_point("catch apf not-present")
    cont(eng)
    gfn = [e for e in eng.log.events if e.kind == "async_pf_not_present"][-1].gfn
    eng.remove_point(1)
    eng.add_point(f"catch apf gfn={gfn:#x}")
    cont(eng)
    last = [e for e in eng.log.events if e.kind in ("async_pf_not_present", "async_pf_ready")][-1]
    assert last.gfn == gfn


def test_catch_the_async_pf_msr_write():
    eng = refkernel()
    eng.add_point("catch msr kvm_asyncpf_en")
    why = cont(eng)
    assert why.startswith("catchpoint 1: msr write kvm_asyncpf_en"), why
    w = [e for e in eng.log.events if e.kind == "msr_write"][-1]
    assert w.index == 0x4B564D02 and w.value & 1


def test_catch_gp_on_the_refused_async_pf_enable():
    # Under the seed profile the host refuses SEND_ALWAYS (reserved bit): wrmsr -> #GP, which the
    # reference kernel's wrmsr_safe fixes up.
    sc = load_scenario(SMALL)
    sc = sc.model_copy(update={"host": sc.host.model_copy(update={"profile": "seed"})})
    eng = Engine(load_image(REPO / "guests" / "refkernel" / "refkernel.elf"), sc)
    eng.add_point("catch gp")
    why = cont(eng)
    assert why.startswith("catchpoint 1: #GP"), why
    v = stopped_vcpu(why)
    evs = eng.log.events
    inj = [e for e in evs if e.kind == "inject"][-1]
    assert inj.vector == 13 and eng.machine.vcpus[v].rip == inj.handler   # stopped at the handler
    assert [e for e in evs if e.kind == "msr_write"][-1].index == 0x4B564D02
    assert eng.latest.stack[v].frame.name == "#GP"


def test_catch_halt():
    eng = refkernel()
    eng.add_point("catch halt")
    why = cont(eng)
    assert why.startswith("catchpoint 1: halt"), why
    assert eng.log.events[-1].kind in ("hlt", "halt")


def test_catch_triple_fault():
    eng = machine_guest("triplefault")
    eng.add_point("catch triple-fault")
    why = cont(eng)
    assert why.startswith("catchpoint 1: triple fault"), why


# --- stepping -----------------------------------------------------------------------------------
def _until_insn(eng: Engine, v: int, kinds: tuple[str, ...], limit: int = 400) -> tuple:
    """Single-step vCPU v until the instruction at RIP is one of `kinds` (call, int, return)."""
    cpu = eng.machine.vcpus[v]
    for _ in range(limit):
        insn = insn_at(cpu)
        if kind_of(insn[1]) in kinds:
            return insn
        step(eng, v, "into")
    raise AssertionError(f"no {kinds} within {limit} instructions")


def test_step_into_runs_one_instruction():
    eng = refkernel()
    v = at_pf_handler(eng)
    cpu = eng.machine.vcpus[v]
    before = cpu.retired
    why = step(eng, v, "into")
    assert cpu.retired == before + 1 and f"vCPU {v} stepped 1 instruction" in why


def test_step_over_a_call_returns_to_the_next_instruction_with_others_frozen():
    eng = refkernel()
    v = at_pf_handler(eng, "trap_dispatch")
    cpu = eng.machine.vcpus[v]
    size, mnem, _ = _until_insn(eng, v, ("call",))
    rip, rsp = cpu.rip, cpu.reg(_RSP)
    others = [o.retired for o in eng.machine.vcpus if o.index != v]
    why = step(eng, v, "over")
    assert why.startswith(f"vCPU {v}: stepped over call"), why
    assert (cpu.rip, cpu.reg(_RSP)) == (rip + size, rsp)
    assert [o.retired for o in eng.machine.vcpus if o.index != v] == others   # frozen


def _syscall_sites(eng: Engine) -> list[int]:
    import capstone
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out = []
    for seg in eng.image.segments:
        out += [a for a, _s, m, _o in cs.disasm_lite(seg.data, seg.paddr) if m == "syscall"]
    return out


def test_step_over_a_syscall_stays_in_the_task():
    eng = refkernel()
    sites = _syscall_sites(eng)
    assert sites
    for a in sites:
        eng.add_point(f"{a:#x} vcpu 0")
    why = cont(eng)
    assert why.startswith("breakpoint") and "on vCPU 0" in why, why
    for b in list(eng.debugger.breakpoints):
        eng.remove_point(b)
    cpu = eng.machine.vcpus[0]
    rip, rsp = cpu.rip, cpu.reg(_RSP)
    assert cpu.cpl() == 3 and insn_at(cpu)[1] == "syscall"
    why = step(eng, 0, "over")
    assert why.startswith("vCPU 0: stepped over syscall"), why
    assert (cpu.rip, cpu.reg(_RSP), cpu.cpl()) == (rip + 2, rsp, 3)


def test_step_out_of_a_function_returns_to_its_caller():
    eng = refkernel()
    v = at_pf_handler(eng)
    cpu = eng.machine.vcpus[v]
    ret = int.from_bytes(cpu.peek(cpu.reg(_RSP), 8), "little")   # at the entry: [rsp] is the return
    step(eng, v, "into")
    step(eng, v, "into")
    why = step(eng, v, "out")
    assert why.startswith(f"vCPU {v}: returned from pf_handler") and "by ret to trap_dispatch" in why, why
    assert cpu.rip == ret


def test_step_out_of_a_handler_goes_through_its_iretq():
    eng = refkernel()
    eng.add_point("catch pf")
    why = cont(eng)
    v = stopped_vcpu(why)
    eng.remove_point(1)
    frame = eng.latest.stack[v].frame
    assert frame is not None and frame.vector == 14
    for _ in range(3):
        why = step(eng, v, "out")
        if "by iretq" in why:
            break
    assert "by iretq" in why, why
    assert eng.latest.stack[v].frame is None or eng.latest.stack[v].frame.at != frame.at


def test_source_line_step_into_and_over():
    eng = refkernel()
    v = at_pf_handler(eng)
    lt = line_table(eng.image)
    cpu = eng.machine.vcpus[v]
    start = lt.where(cpu.rip)
    why = step(eng, v, "line")
    here = lt.where(cpu.rip)
    assert here != start and lt.is_line_start(cpu.rip), why
    assert re.search(r"vCPU \d+: \w+\.[ch]:\d+ \(", why), why
    # line over: calls run through, we stay in pf_handler
    for _ in range(4):
        why = step(eng, v, "line_over")
        assert eng.image.describe(cpu.rip).startswith("pf_handler"), why
        assert lt.is_line_start(cpu.rip)


def test_source_step_into_a_call_enters_the_callee():
    eng = refkernel()
    v = at_pf_handler(eng, "trap_dispatch")
    cpu = eng.machine.vcpus[v]
    lt = line_table(eng.image)
    for _ in range(20):
        if kind_of(insn_at(cpu)[1]) == "call":
            target = cpu.rip
            break
        step(eng, v, "into")
    else:
        pytest.fail("no call in trap_dispatch")
    why = step(eng, v, "line")
    assert not eng.image.describe(cpu.rip).startswith("trap_dispatch") and cpu.rip != target, why
    assert lt.where(cpu.rip) is not None


def test_run_to_cursor():
    eng = refkernel()
    v = at_pf_handler(eng)
    eng.remove_point(1)
    target = sym(eng, "pf_handler") + 0x78      # past the reason check, on the path a #PF takes
    eng.run_to_cursor(v, target)
    eng.pump()
    assert eng.latest.vcpus[v].rip == target and eng.latest.stop_reason.startswith(f"vCPU {v}: reached")


def test_scheduler_locking_freezes_or_runs_the_other_vcpus():
    eng = refkernel()
    v = at_pf_handler(eng)
    eng.remove_point(1)
    others = lambda: [o.retired for o in eng.machine.vcpus if o.index != v]  # noqa: E731
    before = others()
    eng.run_to_cursor(v, sym(eng, "trap_dispatch"))   # v's next trap
    eng.pump()
    assert eng.latest.stop_reason.startswith(f"vCPU {v}: reached trap_dispatch"), eng.latest.stop_reason
    assert others() == before                        # frozen
    eng.set_lock(False)
    assert eng.latest.lock is False
    eng.run_to_cursor(v, sym(eng, "trap_dispatch"))
    eng.pump()
    assert eng.latest.stop_reason.startswith(f"vCPU {v}: reached trap_dispatch")
    assert others() != before                        # they ran meanwhile


def test_a_user_breakpoint_ends_a_step_over():
    eng = refkernel()
    v = at_pf_handler(eng, "trap_dispatch")
    cpu = eng.machine.vcpus[v]
    _until_insn(eng, v, ("call",))
    callee = int(insn_at(cpu)[2], 16)
    eng.add_point(f"{callee:#x}")
    why = step(eng, v, "over")
    assert why.startswith("breakpoint 2 at") and cpu.rip == callee, why
    assert len(eng.debugger.breakpoints) == 2     # the step's own breakpoint is gone


def test_stepping_is_deterministic():
    def session():
        eng = refkernel()
        v = at_pf_handler(eng)
        out = [step(eng, v, m) for m in ("over", "line", "line_over", "out", "out")]
        out.append(cont(eng))
        return out, [e.model_dump_json() for e in eng.log.events]
    assert session() == session()


# --- registers, memory, stack ---------------------------------------------------------------------
def test_edit_registers():
    eng = refkernel()
    v = at_pf_handler(eng)
    eng.set_register(v, "rax", 0x1234_5678)
    assert eng.latest.regs[v]["rax"] == 0x1234_5678 and "rax = 0x12345678" in eng.latest.message
    cr3 = eng.latest.regs[v]["cr3"]
    eng.set_register(v, "cr3", cr3 + 0x1000)
    assert "read-only" in eng.latest.message and eng.latest.regs[v]["cr3"] == cr3


def test_memory_view_follows_a_register_and_shows_the_reason_area():
    eng = refkernel()
    v = at_pf_handler(eng)
    snap = eng.latest
    mem = snap.memory[v]
    area = sym(eng, "apf_reason_area") + 64 * v
    assert mem.expr == "reason" and mem.physical and mem.addr == area
    assert mem.rows[0] == eng.machine.ram.read(area, 16)
    eng.set_memory_view("rsp")
    rsp = eng.latest.regs[v]["rsp"]
    assert eng.latest.memory[v].addr == rsp & ~0xF
    step(eng, v, "into")                                 # push rbp: RSP moves, the view follows
    assert eng.latest.memory[v].addr == eng.latest.regs[v]["rsp"] & ~0xF
    eng.set_memory_view("apf_reason_area + 64")
    assert eng.latest.memory[v].addr == sym(eng, "apf_reason_area") + 64
    eng.set_memory_view("nonsense(")
    assert eng.latest.message.startswith("memory view:") and eng.latest.memory[v].expr != "nonsense("


def test_stack_view_shows_words_from_rsp():
    eng = refkernel()
    v = at_pf_handler(eng)
    st = eng.latest.stack[v]
    cpu = eng.machine.vcpus[v]
    assert st.rsp == cpu.reg(_RSP)
    assert st.words[0] == int.from_bytes(cpu.peek(st.rsp, 8), "little")


from unicorn.x86_const import UC_X86_REG_RSP as _RSP  # noqa: E402


# --- with the engine thread (as the TUI drives it) ---------------------------------------------------
def _wait(pred, timeout=30.0):
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_threaded_steps_and_a_pause_that_cancels_a_step():
    eng = refkernel()
    eng.start(running=False)
    try:
        eng.add_point("pf_handler")
        eng.resume()
        assert _wait(lambda: eng.latest.stop_reason.startswith("breakpoint 1"))
        v = stopped_vcpu(eng.latest.stop_reason)
        eng.remove_point(1)
        eng.step(v, "out")
        assert _wait(lambda: "returned from pf_handler" in eng.latest.stop_reason), eng.latest.stop_reason
        # a run to an address no vCPU executes: it runs until paused, then its breakpoint is gone
        eng.set_lock(False)
        eng.run_to_cursor(v, 0x10)
        assert _wait(lambda: eng.latest.running and eng.latest.stepping.startswith("run to"))
        eng.pause()
        assert _wait(lambda: not eng.latest.running and eng.latest.stepping == "")
        assert _wait(lambda: not eng.debugger.breakpoints)
    finally:
        eng.stop()


def test_scenario_debug_section_sets_points_lock_and_memory_view():
    sc = load_scenario(SMALL).model_copy(deep=True)
    sc.debug.points = ["pf_handler vcpu 1", "catch apf ready"]
    sc.debug.lock = False
    sc.debug.memory = "rsp"
    eng = Engine(load_image(REPO / "guests" / "refkernel" / "refkernel.elf"), sc)
    snap = eng.latest
    assert [(p.kind, p.label, p.vcpu) for p in snap.points] == [("break", "pf_handler", 1),
                                                                ("catch", "apf ready", None)]
    assert snap.lock is False and snap.memory[0].expr == "rsp"
    sc.debug.points = ["no_such_symbol"]
    from apfdbg.scenario import ScenarioError
    with pytest.raises(ScenarioError, match="debug.points: 'no_such_symbol'"):
        Engine(load_image(REPO / "guests" / "refkernel" / "refkernel.elf"), sc)


def test_stepping_a_halted_vcpu_waits_for_its_interrupt_with_the_others_frozen():
    eng = refkernel()
    eng.add_point("catch halt")
    why = cont(eng)
    v = stopped_vcpu(why)
    eng.remove_point(1)
    cpu = eng.machine.vcpus[v]
    assert cpu.state.value in ("idle", "apf_halted")
    others = [o.retired for o in eng.machine.vcpus if o.index != v]
    why = step(eng, v, "into")
    assert why.startswith(f"vCPU {v}: took an event: stopped at its handler"), why
    inj = [e for e in eng.log.events if e.kind == "inject" and e.vcpu == v][-1]
    assert cpu.rip == inj.handler and cpu.state.value == "running"
    assert [o.retired for o in eng.machine.vcpus if o.index != v] == others
