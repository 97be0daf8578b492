"""Pilot tests: every key binding, checking the model (the engine, as a scenario action would change it)
and what the screen shows afterwards.  The engine runs on the test's thread (no engine thread)."""
from __future__ import annotations

import re

import pytest

from apfdbg.ui.app import SPEEDS, ApfApp
from apfdbg.ui.bindings import KEYS

from .conftest import make_app, make_engine, make_ref_engine, screen_text

SIZE = (200, 60)


@pytest.fixture
def busy_engine():
    """The default scenario 400,000 instructions in: works in flight on both vCPUs."""
    return make_engine(run_to=400_000)


def status(app) -> str:
    return str(app.query_one("#status").render())


async def test_every_key_has_a_test_here():
    """The table of keys (bindings.KEYS) and this file stay in step."""
    import inspect
    import sys
    src = inspect.getsource(sys.modules[__name__])
    for k in KEYS:
        name = k.key.split(",")[0]
        assert f'"{name}"' in src, f"no test presses {name!r} ({k.action})"


async def test_space_runs_and_pauses(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        assert not busy_engine.latest.running and "PAUSED" in status(app)
        await pilot.press("space")
        assert busy_engine.latest.running and "RUNNING" in status(app)
        await pilot.press("space")
        assert not busy_engine.latest.running and "PAUSED" in status(app)


async def test_space_at_one_event_per_key_steps_an_event(busy_engine):
    app = make_app(busy_engine, speed="key")
    async with app.run_test(size=SIZE) as pilot:
        n = busy_engine.log.total
        await pilot.press("space")
        assert busy_engine.log.total > n and not busy_engine.latest.running
        assert "stepped to event" in status(app)


async def test_s_steps_one_instruction_on_the_selected_vcpu():
    eng = make_engine(run_to=5_000)          # both vCPUs still booting: running
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        v = eng.machine.vcpus[0]
        before = v.retired
        await pilot.press("s")
        assert v.retired == before + 1
        assert eng.machine.vcpus[1].retired == eng.latest.vcpus[1].retired
        assert "vCPU 0 stepped 1 instruction" in status(app)


async def test_full_stop_steps_one_event(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        n = busy_engine.log.total
        await pilot.press("full_stop")
        snap = busy_engine.latest
        assert snap.stop_event == n and not snap.running
        assert app.query_one("#timeline").selected_seq() == n
        assert f"stepped to event #{n:,}" in status(app)


async def test_n_runs_to_the_next_apf_event(busy_engine):
    from apfdbg.ui.fmt import APF_BREAK_KINDS
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        snap = busy_engine.latest
        e = snap.events.get(snap.stop_event)
        assert e.kind in APF_BREAK_KINDS
        assert "next async-PF event" in status(app)
        assert f"event #{snap.stop_event:,}" in screen_text(app)      # Explain shows it


async def test_plus_and_minus_change_the_speed(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        start = app.speed
        await pilot.press("plus")
        i = SPEEDS.index(start) + 1
        assert app.speed == SPEEDS[i] and busy_engine.events_per_second == (
            None if SPEEDS[i] == "full" else float(SPEEDS[i]))
        for _ in range(len(SPEEDS)):
            await pilot.press("plus")
        assert app.speed == "full" and busy_engine.events_per_second is None
        await pilot.press("space")
        assert "full speed" in status(app)
        await pilot.press("space")
        for _ in range(len(SPEEDS)):
            await pilot.press("minus")
        assert app.speed == "key"
        await pilot.press("equals_sign")
        assert app.speed == SPEEDS[1] and busy_engine.events_per_second == float(SPEEDS[1])


async def test_o_pages_out_the_frame_selected_in_the_memory_map(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("7")
        ram = busy_engine.machine.ram
        mem = app.query_one("#memory")
        # move to a resident frame of the pager's pool
        while ram.is_swapped(mem.gfn):
            await pilot.press("right")
        gfn = mem.gfn
        await pilot.press("o")
        assert ram.is_swapped(gfn)
        assert gfn in busy_engine.latest.swapped
        assert f"paged out gfn {gfn:#x}" in status(app)
        assert f"gfn {gfn:#x} (gpa {gfn << 12:#x}): swapped out" in screen_text(app)


async def test_w_pages_out_the_working_page():
    eng = make_engine(run_to=15_000)         # tasks touching their pages, nothing swapped out yet
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        expected = eng.working_gfn(0)
        assert 0x400 <= expected < 0x418      # a page of the guest's work area
        assert expected is not None and not eng.machine.ram.is_swapped(expected)
        await pilot.press("w")
        assert eng.machine.ram.is_swapped(expected)
        assert f"{expected:#x}" in status(app) and "working page" in status(app)


async def test_R_pages_out_random_frames_of_the_pager(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        before = set(busy_engine.latest.swapped)
        await pilot.press("R")
        after = set(busy_engine.latest.swapped)
        new = after - before
        assert new and new <= set(busy_engine.pager_frames)
        assert f"paged out {len(new)} random frame(s)" in status(app)


async def test_c_completes_the_selected_work(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        works = app.query_one("#works")
        while works.selected_work().state != "paging_in":
            await pilot.press("down")
        w = works.selected_work()
        await pilot.press("c")
        done = [x for a in busy_engine.latest.apf for x in a.done]
        assert any(x.serial == w.serial for x in done)
        assert f"completed work #{w.serial}" in status(app)
        text = screen_text(app)
        import re
        assert re.search(rf"done\s+{w.vcpu}\s+#{w.serial}\b", text)


async def test_e_completes_the_oldest_work_of_the_selected_vcpu(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        oldest = next(w for w in busy_engine.latest.apf[0].queue if w.state == "paging_in")
        await pilot.press("e")
        assert busy_engine.kvm.find_work(oldest.token, 0).state.value == "done"
        assert f"completed work #{oldest.serial}" in status(app)


async def test_C_completes_every_work(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        n = sum(1 for a in busy_engine.latest.apf for w in a.queue if w.state == "paging_in")
        assert n
        await pilot.press("C")
        assert not any(w.state == "paging_in" for a in busy_engine.latest.apf for w in a.queue)
        assert f"completed {n} work(s)" in status(app)
        assert "in flight 0" in screen_text(app)


async def test_a_queues_a_wake_all_on_the_selected_vcpu():
    eng = make_engine(run_to=25_000)
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("v")
        await pilot.press("a")
        done = eng.latest.apf[1].done
        assert done and done[-1].wakeup_all
        assert "queued wake-all" in status(app) and "vCPU 1" in status(app)
        assert "wake-all 1" in screen_text(app)


async def test_X_resets_the_selected_vcpu(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        assert busy_engine.latest.apf[0].msr_val
        await pilot.press("X")
        st = busy_engine.latest.apf[0]
        assert st.msr_val == 0 and st.queued == 0 and all(g is None for g in st.gfns)
        assert "reset vCPU 0" in status(app)
        assert "0x0 (APF off)" in screen_text(app)


async def test_v_and_V_switch_vcpu(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("v")
        assert app.vcpu == 1 and "vCPU 1" in app.query_one("#hash").border_title
        await pilot.press("v")
        assert app.vcpu == 0
        await pilot.press("V")
        assert app.vcpu == 1 and "│ vCPU 1 ·" in status(app)


@pytest.mark.parametrize("key,pid", [("1", "vcpus"), ("2", "msr"), ("3", "hash"), ("4", "works"),
                                     ("5", "reason"), ("6", "timeline"), ("7", "memory"), ("8", "explain"),
                                     ("9", "console")])
async def test_digits_focus_panels(busy_engine, key, pid):
    app = make_app(busy_engine)
    async with app.run_test(size=(80, 24)) as pilot:      # compact: the panel also comes into view
        await pilot.press(key)
        assert app.focused.id == pid and app.query_one(f"#{pid}").display


async def test_tab_cycles_panels(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1")
        await pilot.press("tab")
        assert app.focused.id == "msr"
        await pilot.press("shift+tab")
        assert app.focused.id == "vcpus"


async def test_z_zooms_and_restores(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3", "z")
        hp = app.query_one("#hash")
        assert app.screen.maximized is hp
        await pilot.pause()
        assert hp.size.width > 150
        await pilot.press("z")
        assert app.screen.maximized is None


async def test_h_hides_and_H_shows_all(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("7", "h")
        assert not app.query_one("#memory").display and "memory" in app.hidden
        assert "Host memory map" not in screen_text(app)
        await pilot.press("H")
        assert app.query_one("#memory").display and not app.hidden


async def test_p_chooses_panels(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        from apfdbg.ui.screens import PanelsScreen
        assert isinstance(app.screen, PanelsScreen)
        await pilot.press("space")     # untick the first entry (vCPUs)
        await pilot.press("enter")
        assert not isinstance(app.screen, PanelsScreen)
        assert "vcpus" in app.hidden and not app.query_one("#vcpus").display


async def test_f_filters_the_timeline(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        from apfdbg.ui.screens import FilterScreen
        assert isinstance(app.screen, FilterScreen)
        await pilot.click("#apf")
        tl = app.query_one("#timeline")
        assert tl.filtered
        kinds = {busy_engine.latest.events.get(tl.seq_of(i)).kind for i in range(tl.rows)}
        assert "inject" not in kinds or True
        assert not kinds & {"console", "hlt", "cpuid"}
        assert "filter:" in screen_text(app)


async def test_F_toggles_apf_only(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        tl = app.query_one("#timeline")
        all_rows = tl.rows
        await pilot.press("F")
        assert tl.filtered and tl.rows < all_rows
        await pilot.press("F")
        assert not tl.filtered and tl.rows == all_rows


async def test_t_changes_theme(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        first = app.theme
        await pilot.press("t")
        assert app.theme != first and app.theme.startswith("apf-")
        await pilot.press("t", "t")
        assert app.theme == first


async def test_question_mark_shows_every_key(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=(120, 150)) as pilot:
        await pilot.press("question_mark")
        from apfdbg.ui.screens import HelpScreen
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for k in KEYS:
            assert k.help.split(" ")[0] in text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_enter_advances_the_tour():
    eng = make_engine("tour.toml")
    app = make_app(eng, tour=eng.scenario.tour)
    async with app.run_test(size=SIZE) as pilot:
        assert app.tour_index == 0 and "Tour 1/" in screen_text(app)
        await pilot.press("enter", "enter")
        snap = eng.latest
        assert app.tour_index == 2 and snap.events.get(snap.stop_event).kind == "page_out"
        assert "Tour 3/" in screen_text(app) and "The host swaps memory out" in screen_text(app)


async def test_enter_is_inert_without_a_tour(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        assert app.tour_index == -1 and busy_engine.latest.event_count == busy_engine.log.total


async def test_q_quits(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code in (0, None)


async def test_command_palette_lists_every_binding(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE):
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for k in KEYS:
            if k.action in ("quit",):
                continue
            if k.action == "tour_next":
                continue
            assert any(t.startswith(k.label) for t in titles), k.label
        # and running one changes the model like the key does
        cmd = next(c for c in app.get_system_commands(app.screen) if c.title.startswith("wake-all"))
        cmd.callback()
        assert busy_engine.latest.apf[0].done[-1].wakeup_all


async def test_theme_option_and_unknown_theme():
    from apfdbg.ui.themes import ThemeError
    eng = make_engine()
    app = make_app(eng, theme="apf-amber")
    assert app.theme == "apf-amber"
    with pytest.raises(ThemeError):
        make_app(eng, theme="no-such-theme")


async def test_engine_thread_mode_runs_and_pauses():
    """The real arrangement: the engine in its own thread, the UI polling snapshots."""
    eng = make_engine()
    app = ApfApp(eng, threaded=True, paused=False, speed="full")
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(100):
            await pilot.pause(0.05)
            if app.snap is not None and app.snap.event_count > 200:
                break
        assert app.snap.running and app.snap.event_count > 200
        await pilot.press("space")
        for _ in range(40):
            await pilot.pause(0.05)
            if not app.snap.running:
                break
        assert not app.snap.running and "PAUSED" in status(app)
        t = eng.latest.time
        await pilot.pause(0.2)
        assert eng.latest.time == t


# --- debugger panels and keys ---------------------------------------------------------------------

@pytest.mark.parametrize("key,pid,title", [("d", "code", "Code · vCPU 0"), ("r", "regs", "Registers")])
async def test_d_and_r_show_and_focus_the_debugger_panels(busy_engine, key, pid, title):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        assert not app.query_one(f"#{pid}").display          # hidden until asked for
        await pilot.press(key)
        await pilot.pause()
        assert app.focused.id == pid and app.query_one(f"#{pid}").display
        assert title in screen_text(app)


async def test_b_toggles_a_breakpoint_and_a_run_stops_there():
    eng = make_engine(run_to=5_000)
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        await pilot.pause()
        code = app.query_one("#code")
        rip = eng.latest.vcpus[0].rip
        assert code.selected_addr() == rip                     # the cursor starts on RIP
        await pilot.press("down", "b")
        await pilot.pause()
        addr = code.selected_addr()
        assert addr != rip
        bps = list(eng.debugger.breakpoints.values())
        assert [(b.addr, b.vcpu) for b in bps] == [(addr, None)]  # on every vCPU
        assert [b.addr for b in eng.latest.breakpoints] == [addr]
        where = eng.image.describe(addr)
        assert f"breakpoint {bps[0].id} at {where}" in status(app)
        line = next(l for l in screen_text(app).splitlines() if l.startswith("│") and f"{addr:#x} " in l)
        assert line.startswith("│●")
        # a run stops at the breakpoint, on the vCPU that reached it
        eng.resume()
        eng.pump()
        app.poll(force=True)
        await pilot.pause()
        snap = eng.latest
        assert not snap.running and snap.stop_reason.startswith(f"breakpoint 1 at {where} on vCPU ")
        v = int(snap.stop_reason.rsplit(" ", 1)[1])
        assert snap.vcpus[v].rip == addr
        assert f"breakpoint 1 at {where} on vCPU {v}" in status(app)
        # b again on the same line removes it
        app._set_vcpu(v)
        await pilot.pause()
        assert code.selected_addr() == addr
        await pilot.press("b")
        await pilot.pause()
        assert not eng.debugger.breakpoints and not eng.latest.breakpoints
        assert "removed the breakpoint" in status(app)


async def test_l_switches_the_code_panel_to_the_source_line():
    eng = make_engine(run_to=5_000)
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d", "l")
        await pilot.pause()
        code = app.query_one("#code")
        assert code.source_mode
        file, line = code.lines.where(eng.latest.vcpus[0].rip)
        assert file.endswith("apfdemo.S")
        assert f"apfdemo.S:{line}" in screen_text(app)
        cur = next(l for l in screen_text(app).splitlines() if "▶" in l and f"{line}  " in l)
        assert "movq" in cur or "mov" in cur
        await pilot.press("l")
        await pilot.pause()
        assert not code.source_mode and code.selected_addr() == eng.latest.vcpus[0].rip


async def test_registers_highlight_what_a_step_changed():
    eng = make_engine(run_to=5_000)
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r", "s")
        await pilot.pause()
        regs = app.query_one("#regs")
        changed = {name for name in eng.latest.regs[0] if regs._changed(name)}
        assert "rip" in changed and "rsp" not in changed
        assert f"{eng.latest.regs[0]['rip']:016x}" in screen_text(app)


async def test_b_with_the_code_panel_hidden_only_shows_it(busy_engine):
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("b")
        await pilot.pause()
        assert app.query_one("#code").display and app.focused.id == "code"
        assert not busy_engine.debugger.breakpoints


def test_engine_thread_stops_at_a_breakpoint():
    import time
    eng = make_engine(run_to=5_000)
    addr = eng.latest.vcpus[0].rip + 3          # the instruction after RIP, in a loop both vCPUs run
    eng.start(running=False)
    try:
        eng.toggle_breakpoint(addr)
        deadline = time.monotonic() + 5
        while not eng.latest.breakpoints and time.monotonic() < deadline:
            time.sleep(0.01)
        eng.resume()
        while time.monotonic() < deadline:
            time.sleep(0.02)
            snap = eng.latest
            if not snap.running and snap.stop_reason:
                break
        assert re.match(rf"breakpoint \d+ at {re.escape(eng.image.describe(addr))} on vCPU ", snap.stop_reason)
        v = int(snap.stop_reason.rsplit(" ", 1)[1])
        assert snap.vcpus[v].rip == addr and snap.breakpoints[0].hits == 1
    finally:
        eng.stop()


# --- step-through debugging: stepping, breakpoints panel, registers, memory, stack ---------------------

def stopped_vcpu(eng) -> int:
    return int(re.search(r"vCPU (\d+)", eng.latest.stop_reason).group(1))


def line_of(eng, rip: int):
    from apfdbg.debug.debuginfo import line_table
    return line_table(eng.image).where(rip)


async def test_S_steps_over_a_call():
    eng = make_ref_engine("trap_dispatch+0x108")          # the call of pf_handler
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        v = stopped_vcpu(eng)
        assert app.vcpu == v == 1                            # the UI follows the vCPU that stopped
        before = eng.latest.vcpus[v].retired
        await pilot.press("S")
        snap = eng.latest
        assert snap.vcpus[v].where == "trap_dispatch+0x10d"   # the instruction after the call
        assert snap.vcpus[v].retired - before > 100          # pf_handler ran through
        assert "stepped over call" in status(app) and "trap_dispatch+0x10d" in status(app)


async def test_u_steps_out_of_a_function_and_of_a_handler_by_iretq():
    eng = make_ref_engine("pf_handler")
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        v = stopped_vcpu(eng)
        ret = eng.latest.stack[v].words[0]                   # pf_handler's return address
        await pilot.press("u")
        assert eng.latest.vcpus[v].rip == ret
        assert f"vCPU {v}: returned from pf_handler by ret to trap_dispatch+0x10d" in status(app)
    eng = make_ref_engine("catch pf")                        # at the first instruction of the #PF stub
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        v = stopped_vcpu(eng)
        frame = eng.latest.stack[v].frame
        assert frame is not None and frame.name == "#PF"
        await pilot.press("u")
        snap = eng.latest
        assert snap.vcpus[v].rip == frame.rip and snap.stack[v].frame is None
        assert "by iretq to user_main" in status(app)


async def test_j_and_J_step_source_lines():
    eng = make_ref_engine("trap_dispatch+0x108")
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        v = stopped_vcpu(eng)
        await pilot.press("S")                               # back in trap_dispatch after the call
        start = line_of(eng, eng.latest.vcpus[v].rip)
        await pilot.press("j")
        here = line_of(eng, eng.latest.vcpus[v].rip)
        assert here != start and here[0].endswith("trap.c")
        assert f"vCPU {v}: trap.c:{here[1]} (" in status(app)
        await pilot.press("J")
        nxt = line_of(eng, eng.latest.vcpus[v].rip)
        assert nxt[0] == here[0] and nxt[1] > here[1]
        assert f"trap.c:{nxt[1]}" in status(app)
        await pilot.press("d", "l")                          # the source view shows the same line
        await pilot.pause()
        assert f"trap.c:{nxt[1]}" in screen_text(app)


async def test_g_runs_to_the_line_selected_in_the_code_panel():
    eng = make_engine(run_to=5_000)
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("g")                               # hidden Code panel: g shows it first
        await pilot.pause()
        code = app.query_one("#code")
        assert code.display and app.focused is code
        await pilot.press("down", "down")
        addr = code.selected_addr()
        assert addr != eng.latest.vcpus[0].rip
        await pilot.press("g")
        await pilot.pause()
        snap = eng.latest
        assert snap.vcpus[0].rip == addr and not snap.running
        assert f"vCPU 0: reached {eng.image.describe(addr)}" in status(app)
        assert code.selected_addr() == addr                  # the cursor follows RIP there
        line = next(l for l in screen_text(app).splitlines() if f"{addr:#x} " in l)
        assert "▶" in line


async def test_k_toggles_scheduler_locking():
    eng = make_ref_engine("trap_dispatch+0x108")
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        v = stopped_vcpu(eng)
        other = 1 - v
        assert eng.latest.lock and "steps alone" in status(app)
        before = eng.latest.vcpus[other].retired
        await pilot.press("S")                               # a 6,700-instruction step over pf_handler
        assert eng.latest.vcpus[other].retired == before     # the other vCPU stayed frozen
        await pilot.press("k")
        assert not eng.lock and not eng.latest.lock
        assert "steps with others" in status(app)
        assert "the other vCPUs run while one steps" in screen_text(app)   # the engine's words
    eng2 = make_ref_engine("trap_dispatch+0x108")
    app = make_app(eng2)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("k", "S")                          # the same step, the others running:
        snap = eng2.latest                                   # vCPU 0 reaches the breakpoint first
        assert snap.stop_reason.startswith("breakpoint 1 at trap_dispatch+0x108 on vCPU 0")
        assert app.vcpu == 0 and "on vCPU 0" in status(app)
        await pilot.press("k")
        assert eng2.latest.lock and "steps alone" in status(app)


async def test_status_bar_shows_a_step_in_progress(busy_engine):
    import dataclasses
    app = make_app(busy_engine)
    async with app.run_test(size=SIZE):
        snap = dataclasses.replace(busy_engine.latest, running=True, stepping="step out on vCPU 0 (others frozen)")
        app._apply(snap)
        assert "STEPPING" in status(app) and "step out on vCPU 0 (others frozen)" in status(app)


async def add_point(app, pilot, text: str) -> None:
    from apfdbg.ui.dialogs import PromptScreen
    await pilot.press("B")
    await pilot.pause()
    assert isinstance(app.screen, PromptScreen)
    inp = app.screen.query_one("Input")
    inp.value = text
    await pilot.press("enter")
    await pilot.pause()


async def test_B_adds_breakpoints_watchpoints_and_catchpoints():
    eng = make_ref_engine()
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        from apfdbg.ui.dialogs import PromptScreen
        await add_point(app, pilot, "trap.c:131 vcpu 1 if rax != 0")
        p = eng.latest.points[-1]
        assert (p.kind, p.label, p.vcpu, p.condition) == ("break", "trap.c:131", 1, "rax != 0")
        text = screen_text(app)
        assert app.focused.id == "points" and "trap.c:131" in text and "if rax != 0" in text
        assert f"breakpoint {p.id} at trap.c:131" in text           # the engine's message, as a toast
        await add_point(app, pilot, "watch apf_reason_area 4")
        await add_point(app, pilot, "catch apf ready gfn=0x802")
        kinds = [(q.kind, q.label, q.vcpu) for q in eng.latest.points]
        assert kinds[1:] == [("watch", "write apf_reason_area [4]", None), ("catch", "apf ready gfn=0x802", None)]
        assert "write apf_reason_area [4]" in screen_text(app) and "apf ready gfn=0x802" in screen_text(app)
        # a typo keeps the dialog open and says what is wrong; nothing is sent
        await add_point(app, pilot, "catch nothing")
        assert isinstance(app.screen, PromptScreen)
        assert "catch 'nothing'?" in screen_text(app)
        await pilot.press("escape")
        assert len(eng.latest.points) == 3
        # a run stops at the watchpoint: its row is marked, its hits counted
        eng.resume()
        eng.pump()
        app.poll(force=True)
        await pilot.pause()
        w = eng.latest.points[1]
        assert eng.latest.stop_reason.startswith(f"watchpoint {w.id} (write apf_reason_area [4])")
        assert w.hits == 1
        row = next(l for l in screen_text(app).splitlines() if "write apf_reason_area [4]" in l and "▶" in l)
        assert re.search(r"all\s+1\b", row)


async def test_B_shows_the_engines_refusal_as_a_warning():
    eng = make_ref_engine()
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        app._check_point = lambda text: ""         # let a bad point through to the engine
        await add_point(app, pilot, "no_such_symbol")
        assert eng.latest.message.startswith("not set:") and not eng.latest.points
        assert "not set:" in screen_text(app)
        note = list(app._notifications)[-1]
        assert note.message.startswith("not set:") and note.severity == "warning"


async def test_delete_and_backspace_remove_the_selected_point():
    eng = make_ref_engine()
    for text in ("pf_handler", "catch gp", "catch triple-fault"):
        eng.add_point(text)
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("B", "escape", "down")
        pts = app.query_one("#points")
        assert app.focused is pts and pts.selected_point().label == "#GP"
        await pilot.press("delete")
        await pilot.pause()
        assert [p.label for p in eng.latest.points] == ["pf_handler", "triple fault"]
        assert "#GP" not in screen_text(app) and "deleted point 2" in screen_text(app)
        await pilot.press("home", "backspace")
        await pilot.pause()
        assert [p.label for p in eng.latest.points] == ["triple fault"]
        await pilot.press("6", "delete")                      # elsewhere Delete deletes nothing
        assert len(eng.latest.points) == 1


async def test_enter_edits_the_selected_register():
    eng = make_ref_engine("pf_handler")
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        from apfdbg.ui.dialogs import PromptScreen
        v = stopped_vcpu(eng)
        await pilot.press("r", "right")                       # rax -> rbx
        regs = app.query_one("#regs")
        assert regs.selected == "rbx"
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, PromptScreen)
        inp = app.screen.query_one("Input")
        assert inp.value == f"{eng.latest.regs[v]['rbx']:#x}"   # prefilled with the value
        inp.value = "0x1234abcd"
        await pilot.press("enter")
        await pilot.pause()
        assert eng.latest.regs[v]["rbx"] == 0x1234abcd
        assert eng.machine.vcpus[v].reg(__import__("apfdbg.machine.debug", fromlist=["REGS"]).REGS["rbx"]) == 0x1234abcd
        text = screen_text(app)
        assert "000000001234abcd" in text and f"vCPU {v}: rbx = 0x1234abcd" in text
        # decimal works too
        await pilot.press("enter")
        await pilot.pause()
        app.screen.query_one("Input").value = "31"
        await pilot.press("enter")
        await pilot.pause()
        assert eng.latest.regs[v]["rbx"] == 31
        # a read-only register: the engine's refusal, as a warning; nothing changes
        cr3 = eng.latest.regs[v]["cr3"]
        regs.action_select("cr3")
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, PromptScreen) and eng.latest.regs[v]["cr3"] == cr3
        assert "cr3 is read-only here" in screen_text(app)


async def test_m_shows_guest_memory_at_the_reason_area():
    eng = make_ref_engine("catch apf ready")
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        v = stopped_vcpu(eng)
        assert not app.query_one("#gmem").display
        await pilot.press("m")
        await pilot.pause()
        mv = eng.latest.memory[v]
        area = eng.latest.apf[v].area_gpa
        assert app.focused.id == "gmem" and mv.physical and mv.addr == area & ~0xF
        text = screen_text(app)
        assert f"reason → {mv.addr:#x} {eng.image.describe(mv.addr)}" in text and "guest-physical" in text
        assert f"{mv.addr:x}  02 00 00 00" in text              # reason 2: page ready


async def test_M_sets_the_memory_address():
    eng = make_ref_engine("pf_handler")
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        from apfdbg.ui.dialogs import PromptScreen
        v = stopped_vcpu(eng)
        await pilot.press("M")
        await pilot.pause()
        assert isinstance(app.screen, PromptScreen) and app.query_one("#gmem").display
        await pilot.click("#preset-1")                       # the rsp preset
        await pilot.pause()
        rsp = eng.latest.regs[v]["rsp"]
        mv = eng.latest.memory[v]
        assert eng.mem_expr == "rsp" and mv.addr == rsp & ~0xF and not mv.physical
        assert f"rsp → {mv.addr:#x}" in screen_text(app)
        await pilot.press("S")                               # push rbx: the stack changes, and so does RSP
        assert eng.latest.memory[v].addr == eng.latest.regs[v]["rsp"] & ~0xF
        # a bad expression: the engine's message as a warning, the view unchanged
        await pilot.press("M")
        await pilot.pause()
        app.screen.query_one("Input").value = "nosuch + 3"
        await pilot.press("enter")
        await pilot.pause()
        assert eng.mem_expr == "rsp" and "no register or symbol named 'nosuch'" in screen_text(app)


async def test_y_shows_the_stack_and_the_interrupt_frame():
    eng = make_ref_engine("pf_handler")
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        v = stopped_vcpu(eng)
        sv = eng.latest.stack[v]
        await pilot.press("y")
        await pilot.pause()
        assert app.focused.id == "stack" and app.query_one("#stack").display
        text = screen_text(app)
        assert f"rsp {sv.rsp:#x}" in text and "in #PF handler idt_stubs+0xe0" in text
        assert "trap_dispatch+0x10d" in text                 # the return address, named
        fr = sv.frame
        err = next(l for l in text.splitlines() if "#PF error code" in l)
        assert f"+{fr.at - sv.rsp:#x}" in err and "┐" in err
        rip = next(l for l in text.splitlines() if "│ rip" in l)
        assert f"{fr.rip:016x}" in rip and eng.image.describe(fr.rip) in rip
        assert re.search(rf"{fr.ss:016x}\s+┘ ss", text)


# --- the debugger panels' layout ------------------------------------------------------------------

@pytest.mark.parametrize("size", [(200, 60), (120, 40)])
async def test_debugger_panels_fit_side_by_side_or_stacked(size):
    from apfdbg.ui.layout import DEBUG_PANELS, MIN_W
    eng = make_ref_engine("pf_handler")
    app = make_app(eng)
    async with app.run_test(size=size) as pilot:
        await pilot.press("d", "r", "y", "m", "B", "escape")
        await pilot.pause()
        regions = {pid: app.query_one(f"#{pid}").region for pid in DEBUG_PANELS}
        for pid, r in regions.items():
            assert r.width >= MIN_W[pid] and r.height >= 4, (pid, r)
            assert r.right <= size[0]
        for a in DEBUG_PANELS:
            for b in DEBUG_PANELS:
                if a < b:
                    assert not regions[a].overlaps(regions[b]), (a, b)
        # zoom a debug panel and back
        await pilot.press("y", "z")
        await pilot.pause()
        assert app.query_one("#stack").region.width == size[0]
        await pilot.press("z")
        await pilot.pause()
        assert app.query_one("#stack").region == regions["stack"]


async def test_debugger_panels_in_the_compact_layout():
    eng = make_ref_engine("pf_handler")
    app = make_app(eng)
    async with app.run_test(size=(80, 24)) as pilot:
        for key, pid in (("y", "stack"), ("m", "gmem"), ("r", "regs")):
            await pilot.press(key)
            await pilot.pause()
            p = app.query_one(f"#{pid}")
            assert app.focused is p and p.display and p.region.width == 80
            shown = [q for q in ("code", "regs", "stack", "gmem", "points") if app.query_one(f"#{q}").display]
            assert shown == [pid]


async def test_steps_run_at_full_speed_in_slow_motion_then_the_pace_returns(monkeypatch):
    """Slow motion paces free runs only: the engine never sleeps the slow-motion pause while a
    stepping command runs, and the speed setting stays as it was."""
    import time
    import apfdbg.engine as engine_mod
    paced = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if seconds == 1.0 / 4:
            paced.append(seconds)       # the slow-motion pause (4 events per second)
        real_sleep(seconds)
    monkeypatch.setattr(engine_mod.time, "sleep", sleep)
    eng = make_ref_engine("pf_handler")
    app = ApfApp(eng, threaded=True, paused=True, speed=4)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        assert eng.events_per_second == 4.0
        t0 = time.monotonic()
        await pilot.press("u")
        while time.monotonic() - t0 < 60:
            await pilot.pause(0.02)
            if not eng.latest.running and eng.latest.stop_reason.startswith("vCPU 1: returned"):
                break
        assert eng.latest.stop_reason == "vCPU 1: returned from pf_handler by ret to trap_dispatch+0x10d"
        assert paced == []
        await pilot.pause(0.1)
        assert eng.events_per_second == 4.0 and app.speed == 4
