"""gdb and the TUI on one engine: a raw gdb client drives the run, the TUI (Textual's Pilot) shows it.

Every wait is for a condition, with a generous deadline; the machine's run is deterministic, so
the stops (thread, address) are the same on every run."""
from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

from apfdbg.engine import Engine
from apfdbg.gdbstub.server import GdbServer
from apfdbg.gdbstub.tui import GdbApp
from apfdbg.machine.image import load_image
from apfdbg.scenario import load_scenario

from .rsp import Rsp

HERE = Path(__file__).resolve().parent
SIZE = (200, 60)
DEADLINE = 30.0


def small_apf_engine() -> Engine:
    sc = load_scenario(HERE / "apf_small.toml")
    return Engine(load_image(Path(sc.base_dir) / sc.image), sc)


def status(app) -> str:
    return str(app.query_one("#status").render())


async def until(pilot, cond, what: str) -> None:
    """Let the app run (it polls the engine's snapshots) until cond() holds."""
    deadline = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def gdb_app(engine: Engine) -> tuple[GdbApp, GdbServer, list[str]]:
    server = GdbServer(engine, "127.0.0.1", 0)
    app = GdbApp(engine, server)
    notes: list[str] = []
    app.notify = lambda message, **kw: notes.append(str(message))  # type: ignore[method-assign]
    return app, server, notes


def test_the_tui_shows_what_gdb_does_and_its_host_keys_run_on_the_stub_thread():
    eng = small_apf_engine()
    app, server, notes = gdb_app(eng)
    pf = eng.image.symbol("pf_handler").addr
    applied: list[str] = []
    apply = eng.apply

    def spy(action):
        applied.append(threading.current_thread().name)
        return apply(action)
    eng.apply = spy  # type: ignore[method-assign]

    async def session() -> Rsp:
        async with app.run_test(size=SIZE) as pilot:
            # the app started the stub: the machine waits at its entry for gdb, the address shown
            port = server.address[1]
            await until(pilot, lambda: f"waiting for gdb: target remote 127.0.0.1:{port}" in status(app),
                        "the waiting status")
            assert "PAUSED" in status(app) and eng.machine.now == 0

            c = Rsp(server.address)
            c.cmd("qSupported:swbreak+")
            assert c.cmd(f"Z0,{pf:x},1") == b"OK"
            stop = c.cmd("vCont;c", timeout=DEADLINE)
            assert stop.startswith(b"T05thread:") and stop.endswith(b"swbreak:;"), stop
            vcpu = int(stop[len(b"T05thread:"):].split(b";")[0], 16) - 1

            # the snapshot was published before gdb got the stop; the app follows that vCPU
            snap = eng.latest
            assert not snap.running and snap.stop_reason == f"gdb: breakpoint at pf_handler on vCPU {vcpu}"
            assert snap.regs[vcpu]["rip"] == pf and any(b.addr == pf for b in snap.breakpoints)
            await until(pilot, lambda: "breakpoint at pf_handler" in status(app), "the stop in the status bar")
            assert "PAUSED" in status(app) and re.search(rf"│ vCPU {vcpu}\b", status(app)) and app.vcpu == vcpu

            # a register written by gdb is in the TUI's snapshot as soon as gdb has the OK
            assert c.cmd(f"Hg{vcpu + 1:x}") == b"OK"
            assert c.cmd("P0=" + (0x1234ABCD).to_bytes(8, "little").hex()) == b"OK"   # rax
            assert eng.latest.regs[vcpu]["rax"] == 0x1234ABCD

            # a host key: queued by the UI, run by the stub's thread while the machine is stopped
            now, done, events = eng.machine.now, eng.latest.commands, eng.log.total
            await pilot.press("w")
            await until(pilot, lambda: eng.latest.commands == done + 1, "the page-out command")
            assert applied == ["apfdbg-gdbstub"]
            msg = eng.latest.message
            assert msg.endswith(f"vCPU {vcpu}'s working page") and eng.machine.now == now, msg
            gfn = int(re.search(r"gfn (0x[0-9a-f]+)", msg).group(1), 16)
            assert gfn in eng.latest.swapped and eng.latest.event_count == events + 1
            await until(pilot, lambda: "working page" in status(app), "the page-out in the status bar")

            # run control belongs to gdb: space says so and runs nothing
            for key in ("space", "s", "full_stop", "n"):
                await pilot.press(key)
            assert sum("gdb drives this run" in n for n in notes) == 4
            await pilot.pause(0.2)
            assert eng.machine.now == now and not eng.latest.running and "PAUSED" in status(app)

            # gdb continues (breakpoint gone): the TUI shows the run, then the quit stops the stub
            assert c.cmd(f"z0,{pf:x},1") == b"OK"
            c.send("vCont;c")
            await until(pilot, lambda: "RUNNING" in status(app) or eng.latest.exited, "the run in the TUI")
            await pilot.press("q")
        return c

    c = asyncio.run(session())
    try:
        server._thread.join(DEADLINE)
        assert not server._thread.is_alive()
        assert c.closed_by_peer(timeout=DEADLINE)   # gdb sees the connection close
    finally:
        c.close()


def test_the_run_ending_under_gdb_shows_in_the_tui():
    eng = small_apf_engine()
    app, server, notes = gdb_app(eng)

    async def session() -> None:
        async with app.run_test(size=SIZE) as pilot:
            c = Rsp(server.address)
            try:
                assert c.cmd("vCont;c", timeout=120) == b"W01"
                snap = eng.latest
                assert snap.exited and not snap.running and snap.stop_reason.startswith("guest exited: status 1")
                await until(pilot, lambda: "EXITED" in status(app), "the exit in the status bar")
                # the stub still serves (the TUI still shows the run): the host keys still work
                done = eng.latest.commands
                await pilot.press("C")
                await until(pilot, lambda: eng.latest.commands == done + 1, "complete-all after the end")
                assert "completed 0 work(s)" in eng.latest.message
                assert server._thread.is_alive()
            finally:
                c.close()
            await until(pilot, lambda: any("gdb detached" in n for n in notes), "the detach notice")
            await pilot.press("q")

    asyncio.run(session())
    server._thread.join(DEADLINE)
    assert not server._thread.is_alive()
    assert any("gdb connected from 127.0.0.1" in n for n in notes)
    assert any("the run ended: status 1" in n for n in notes)


def test_a_breakpoint_set_in_the_tui_stops_gdbs_continue_as_a_plain_sigtrap():
    eng = small_apf_engine()
    app, server, _notes = gdb_app(eng)
    pf = eng.image.symbol("pf_handler").addr

    async def session() -> None:
        async with app.run_test(size=SIZE) as pilot:
            c = Rsp(server.address)
            try:
                c.cmd("qSupported:swbreak+")
                eng.toggle_breakpoint(pf)        # what the b key does: a command, run by the stub
                await until(pilot, lambda: any(b.addr == pf for b in eng.latest.breakpoints),
                            "the TUI's breakpoint")
                stop = c.cmd("vCont;c", timeout=DEADLINE)
                assert stop.startswith(b"T05thread:") and b"swbreak" not in stop, stop
                vcpu = int(stop[len(b"T05thread:"):].split(b";")[0], 16) - 1
                assert eng.latest.stop_reason == f"breakpoint 1 at pf_handler on vCPU {vcpu} (apfdbg's, not gdb's)"
                # gdb detaches: the run goes on until the TUI's breakpoint stops it again
                c.send("D")
                assert c.reply() == b"OK"
            finally:
                c.close()
            await until(pilot, lambda: "(attach gdb to go on)" in status(app), "the stop without gdb")
            assert "PAUSED" in status(app) and "breakpoint 1 at pf_handler on vCPU" in status(app)
            # a gdb that attaches gets that stop
            c2 = Rsp(server.address)
            try:
                stop = c2.cmd("?")
                vcpu = int(stop[len(b"T05thread:"):].split(b";")[0], 16) - 1
                assert stop.startswith(b"T05thread:") and eng.latest.regs[vcpu]["rip"] == pf
            finally:
                c2.close()
            await pilot.press("q")

    asyncio.run(session())
    server._thread.join(DEADLINE)
    assert not server._thread.is_alive()


def test_a_stub_thread_that_dies_shows_an_error_in_the_tui(monkeypatch):
    eng = small_apf_engine()
    app, server, notes = gdb_app(eng)

    def broken(timeout):
        raise RuntimeError("boom")
    monkeypatch.setattr(server, "_accept", broken)

    async def session() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: not server._thread.is_alive(), "the stub to give up")
            await until(pilot, lambda: "ERROR" in status(app), "the error in the status bar")
            assert "gdb stub stopped: RuntimeError: boom" in status(app)
            assert eng.latest.error == "gdb stub stopped: RuntimeError: boom"
            await until(pilot, lambda: any("RuntimeError: boom" in n for n in notes), "the error notice")
            await pilot.press("q")

    asyncio.run(session())


def test_a_failing_command_is_reported_and_the_next_one_runs():
    eng = small_apf_engine()
    eng.drive_externally()
    server = GdbServer(eng, "127.0.0.1", 0)
    server.start()
    try:
        ran = []
        eng.command(lambda: 1 // 0)
        eng.command(lambda: ran.append(threading.current_thread().name))
        deadline = time.monotonic() + DEADLINE
        while eng.latest.commands < 1:
            assert time.monotonic() < deadline, "the commands did not run"
            time.sleep(0.02)
        assert ran == ["apfdbg-gdbstub"] and server._thread.is_alive()
        assert eng.latest.message.startswith("command failed: ZeroDivisionError")
        c = Rsp(server.address)
        try:
            assert c.cmd("?") == b"T05thread:1;"
        finally:
            c.close()
    finally:
        server.stop()
    assert not server._thread.is_alive()
