"""Snapshot tests: every panel in the states that matter, driven by scenarios (deterministic: the engine
runs on the test's thread to a virtual time or an event, then the app mounts paused).

Update after an intended change of the look: pytest tests/ui --snapshot-update
"""
from __future__ import annotations


from .conftest import BENCH_GUEST, FULL_HASH, SEED_PROFILE, make_app, make_engine, make_ref_engine

WIDE = (200, 60)
SMALL = (80, 24)


def test_empty_before_the_first_instruction(snap_compare):
    """t = 0: every panel says how it gets filled."""
    assert snap_compare(make_app(make_engine()), terminal_size=WIDE)


def test_default_scenario_wide(snap_compare):
    """The default scenario a few hundred thousand instructions in: works in flight, hashed gfns."""
    assert snap_compare(make_app(make_engine(run_to=400_000)), terminal_size=WIDE)


def test_default_scenario_80x24(snap_compare):
    assert snap_compare(make_app(make_engine(run_to=400_000)), terminal_size=SMALL)


def test_not_present_reason_written(snap_compare):
    """From the first page-out, n runs to the first async #PF: reason 1 in the area, the new work, the
    hashed gfn and the new events highlighted as changed since the last pause; Explain says why."""
    eng = make_engine(until={"kind": "page_out"})
    assert snap_compare(make_app(eng), terminal_size=WIDE, press=["n"])


def test_vcpus_halted_and_stalled(snap_compare):
    """vCPU panel zoomed at an IF=0 synchronous stall (the other vCPU halted by a doublefault)."""
    eng = make_engine(until={"kind": "stall"})
    assert snap_compare(make_app(eng), terminal_size=(140, 20), press=["1", "z"])


def test_msr_panel_gp_on_seed_profile(snap_compare):
    """The seed profile refuses SEND_ALWAYS: the MSR list shows the #GP, its reason, the retry."""
    eng = make_engine(SEED_PROFILE, run_to=30_000)
    assert snap_compare(make_app(eng), terminal_size=(120, 24), press=["2", "z"])


def test_hash_table_full_with_collisions(snap_compare):
    """8 vCPUs, 64 outstanding async PFs each: a full table, displaced entries (home != slot)."""
    eng = make_engine(FULL_HASH, image=BENCH_GUEST, run_to=3_000_000)
    assert snap_compare(make_app(eng), terminal_size=WIDE, press=["v", "v", "v"])


def test_hash_backward_shift_delete(snap_compare):
    """After completing works: page-ready deletes move displaced entries back (shown as 'last delete')."""
    from apfdbg.scenario import Action
    eng = make_engine(FULL_HASH, image=BENCH_GUEST, run_to=3_000_000)
    stalled_on = eng.latest.vcpus[2].stall_gfn
    for _ in range(6):
        eng.command(Action(at=0, do="complete_oldest", vcpu=2))
    eng.command(Action(at=0, do="page_in", gfns=stalled_on))  # the vCPU runs again (and takes page-readies)
    # n stops at the first page-ready: its delete moves two entries back (highlighted)
    assert snap_compare(make_app(eng), terminal_size=(100, 40), press=["v", "v", "3", "z", "n"])


def test_works_done_in_flight_and_wake_all(snap_compare):
    """Done works waiting (the vCPU cannot take a #PF yet), works paging in, a wake-all dummy."""
    eng = make_engine(FULL_HASH, image=BENCH_GUEST, run_to=3_000_000)
    from apfdbg.scenario import Action
    eng.command(Action(at=0, do="complete_oldest", vcpu=0))
    eng.command(Action(at=0, do="complete_oldest", vcpu=0))
    eng.command(Action(at=0, do="wake_all", vcpu=1))
    assert snap_compare(make_app(eng), terminal_size=(100, 30), press=["4", "z"])


def test_timeline_apf_only(snap_compare):
    """The timeline filtered to async-PF events."""
    eng = make_engine(run_to=300_000)
    assert snap_compare(make_app(eng), terminal_size=(120, 30), press=["6", "F", "z"])


def test_memory_map_with_cursor(snap_compare):
    eng = make_engine(run_to=300_000)
    assert snap_compare(make_app(eng), terminal_size=(100, 30), press=["7", "right", "right", "down", "z"])


def test_explain_doublefault(snap_compare):
    eng = make_engine(until={"kind": "async_pf_doublefault"})
    assert snap_compare(make_app(eng), terminal_size=(100, 24), press=["8", "z"])


def test_explain_disable_with_work_outstanding(snap_compare):
    eng = make_engine(until={"kind": "completion_queue_cleared", "where": {"cancelled": "*"}})
    assert snap_compare(make_app(eng), terminal_size=WIDE)


def test_tour_step(snap_compare):
    eng = make_engine("tour.toml")
    app = make_app(eng, tour=eng.scenario.tour)
    assert snap_compare(app, terminal_size=WIDE, press=["enter", "enter", "enter"])


def test_help_screen(snap_compare):
    assert snap_compare(make_app(make_engine()), terminal_size=(100, 40), press=["question_mark"])


def test_paper_theme(snap_compare):
    eng = make_engine(run_to=400_000)
    assert snap_compare(make_app(eng, theme="apf-paper"), terminal_size=WIDE)


def test_code_panel_disassembly_with_breakpoint(snap_compare):
    """Code panel zoomed: the disassembly around vCPU 0's RIP, symbol+offset labels, the current
    instruction highlighted, a breakpoint marked on the next line."""
    eng = make_engine(run_to=5_000)
    assert snap_compare(make_app(eng), terminal_size=(100, 24), press=["d", "down", "b", "z"])


def test_code_panel_source_view(snap_compare):
    """l: the source line RIP is on (DWARF line info of the -g guest), from guests/apfdemo/apfdemo.S."""
    eng = make_engine(run_to=5_000)
    assert snap_compare(make_app(eng), terminal_size=(100, 24), press=["d", "l", "z"])


def test_registers_panel_changed_since_last_pause(snap_compare):
    """Registers zoomed after a single step: what the instruction changed is highlighted."""
    eng = make_engine(run_to=5_000)
    assert snap_compare(make_app(eng), terminal_size=(100, 24), press=["r", "z", "s"])


# --- step-through debugging -------------------------------------------------------------------------
DEBUG_KEYS = ["d", "r", "y", "m", "B", "escape"]


def at_pf_handler():
    """The reference kernel stopped at pf_handler on vCPU 1 (a user #PF just after a page-ready the
    catchpoint stopped at), with a watchpoint on vCPU 1's reason area."""
    eng = make_ref_engine("catch apf ready")
    for text in ("pf_handler", "watch apf_reason_area+64 4 vcpu 1"):
        eng.add_point(text)
    eng.resume()
    eng.pump()
    assert eng.latest.stop_reason == "breakpoint 2 at pf_handler on vCPU 1"
    return eng


def test_debugger_view_at_a_breakpoint(snap_compare):
    """Every debugger panel at 200x60: Code at pf_handler, Registers, Stack with the #PF frame
    bracketed, Guest memory on vCPU 1's reason area (reason 2), Breakpoints with the one hit marked."""
    assert snap_compare(make_app(at_pf_handler()), terminal_size=WIDE, press=DEBUG_KEYS)


def test_debugger_view_120x40(snap_compare):
    """The same at 120x40: Code over Guest memory over Breakpoints, Registers over Stack; the
    debugger panels have the focus, so they take most of the height."""
    assert snap_compare(make_app(at_pf_handler()), terminal_size=(120, 40), press=DEBUG_KEYS)


def test_stack_panel_interrupt_frame(snap_compare):
    """Stack zoomed in the #PF handler: return addresses named, runs of zeros folded, the frame the
    delivery pushed bracketed (error code, RIP, CS, RFLAGS decoded, RSP, SS)."""
    assert snap_compare(make_app(make_ref_engine("pf_handler")), terminal_size=(100, 30), press=["y", "z"])


def test_guest_memory_follows_rsp(snap_compare):
    """Guest memory on `rsp` (typed in the M dialog), after a step over `push rbx`: the view followed
    RSP down and the pushed bytes are highlighted."""
    keys = ["M", "r", "s", "p", "enter", "S", "m", "z"]
    assert snap_compare(make_app(make_ref_engine("pf_handler")), terminal_size=(100, 24), press=keys)


def test_add_point_dialog(snap_compare):
    """B: the add dialog with the syntax, a typo's message, the Breakpoints panel behind it."""
    keys = ["B", *"catch nothing", "enter"]
    assert snap_compare(make_app(at_pf_handler()), terminal_size=(120, 40), press=keys)


def test_breakpoints_panel(snap_compare):
    """Breakpoints zoomed: a conditional breakpoint on one vCPU, a watchpoint, catchpoints; the one the
    run stopped at marked, its hit count highlighted."""
    eng = make_ref_engine("catch msr kvm_asyncpf_en", "trap.c:131 vcpu 1 if rax != 0", "rwatch apf_reason_area 64",
                          "catch apf not-present token=0x1")
    assert snap_compare(make_app(eng), terminal_size=(100, 20), press=["B", "escape", "z"])


def test_registers_cursor_and_edit(snap_compare):
    """Registers zoomed with the cursor moved to rbx and a new value entered: the write is highlighted."""
    keys = ["r", "z", "right", "enter", *"0x1234abcd", "enter"]
    assert snap_compare(make_app(make_ref_engine("pf_handler")), terminal_size=(100, 24), press=keys)
