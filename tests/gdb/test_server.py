"""Every command of the stub against real machines, through a real socket, packet by packet."""
import random
import struct
import threading
import time

import pytest
from unicorn import x86_const as X

from apfdbg.gdbstub import target as tdesc
from apfdbg.gdbstub.protocol import Packet, checksum, escape, frame
from apfdbg.gdbstub.server import EXIT_KILLED, GdbServer, serve
from apfdbg.machine.config import MachineConfig
from apfdbg.machine.image import load_image
from apfdbg.machine.machine import Machine
from apfdbg.machine.vcpu import State

from .rsp import GUESTS, Rsp, machine_engine

OFF = {r.name: sum(x.size for x in tdesc.REGISTERS[:i]) for i, r in enumerate(tdesc.REGISTERS)}


def reg(block: bytes, name: str) -> int:
    r = tdesc.REGISTERS[tdesc.BY_NAME[name]]
    return int.from_bytes(bytes.fromhex(block.decode())[OFF[name]:OFF[name] + r.size], "little")


def regs(c: Rsp, tid: int) -> bytes:
    assert c.cmd(f"Hg{tid:x}") == b"OK"
    return c.cmd("g")


def pnum(name: str) -> str:
    return f"{tdesc.BY_NAME[name]:x}"


def p_read(c: Rsp, name: str) -> int:
    return int.from_bytes(bytes.fromhex(c.cmd("p" + pnum(name)).decode()), "little")


# ---- first contact ------------------------------------------------------------------------------
def test_first_contact_queries(served):
    e = machine_engine("machine/hello", vcpus=3)
    _srv, c = served(e)
    sup = c.cmd("qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;vContSupported+").decode()
    feats = sup.split(";")
    assert "PacketSize=4000" in feats and "qXfer:features:read+" in feats
    assert {"vContSupported+", "swbreak+", "hwbreak+", "QStartNoAckMode+"} <= set(feats)
    assert "multiprocess+" not in feats
    assert c.cmd("?") == b"T05thread:1;"
    assert c.cmd("qfThreadInfo") == b"m1,2,3"
    assert c.cmd("qsThreadInfo") == b"l"
    assert c.cmd("qC") == b"QC1"
    assert c.cmd("qAttached") == b"1"
    assert c.cmd("vCont?") == b"vCont;c;C;s;S"
    assert c.cmd("T3") == b"OK" and c.cmd("T4").startswith(b"E") and c.cmd("T0").startswith(b"E")
    assert bytes.fromhex(c.cmd("qThreadExtraInfo,2").decode()).decode().startswith("vCPU 1 running")
    assert c.cmd("vMustReplyEmpty") == b""
    assert c.cmd("qTStatus") == b""
    assert c.cmd("!") == b"" and c.cmd("Qbogus") == b"" and c.cmd("jfoo") == b""
    assert c.cmd("qSymbol::") == b"OK"


def test_swbreak_is_only_offered_to_a_gdb_that_asks(served):
    _srv, c = served(machine_engine("machine/hello"))
    feats = c.cmd("qSupported:multiprocess+").decode().split(";")
    assert "swbreak+" not in feats and "hwbreak+" not in feats


def test_target_xml_in_chunks(served):
    _srv, c = served(machine_engine("machine/hello"))
    got, off = b"", 0
    while True:
        r = c.cmd(f"qXfer:features:read:target.xml:{off:x},64")  # 0x64 = 100 bytes
        assert r[:1] in (b"m", b"l") and len(r) <= 101
        got += r[1:]
        off += len(r) - 1
        if r[:1] == b"l":
            break
    assert got == tdesc.TARGET_XML
    assert c.cmd(f"qXfer:features:read:target.xml:{len(got) + 50:x},10") == b"l"
    assert c.cmd("qXfer:features:read:other.xml:0,100").startswith(b"E")
    assert c.cmd("qXfer:features:read:target.xml:zz,10").startswith(b"E")


def test_monitor_commands(served):
    _srv, c = served(machine_engine("machine/hello"))
    text = bytes.fromhex(c.cmd("qRcmd," + b"vcpus".hex()).decode()).decode()
    assert "vCPU 0 (thread 1): running" in text and "vCPU 1 (thread 2)" in text
    assert "virtual time 0" in bytes.fromhex(c.cmd("qRcmd," + b"time".hex()).decode()).decode()
    assert "monitor commands" in bytes.fromhex(c.cmd("qRcmd," + b"bogus".hex()).decode()).decode()


# ---- registers ------------------------------------------------------------------------------------
def test_registers_of_each_thread(served):
    e = machine_engine("machine/hello", vcpus=2)
    _srv, c = served(e)
    for tid in (1, 2):
        g = regs(c, tid)
        assert len(g) == 2 * tdesc.G_SIZE
        assert reg(g, "rip") == e.image.entry
        assert reg(g, "rdi") == tid - 1 and reg(g, "rsi") == 2
        assert reg(g, "rsp") == 0x11000 + 0x1000 * (tid - 1)
    assert c.cmd("Hg2") == b"OK"
    assert p_read(c, "rdi") == 1
    assert c.cmd(f"P{pnum('rax')}=" + (0xDEADBEEF).to_bytes(8, "little").hex()) == b"OK"
    assert e.machine.vcpus[1].reg(X.UC_X86_REG_RAX) == 0xDEADBEEF
    assert e.machine.vcpus[0].reg(X.UC_X86_REG_RAX) == 0
    assert c.cmd(f"P{pnum('cs')}=" + (0x23).to_bytes(4, "little").hex()) == b"E0d"   # read-only
    assert c.cmd(f"P{pnum('cr2')}=" + (0x1234).to_bytes(8, "little").hex()) == b"OK"
    assert p_read(c, "cr2") == 0x1234
    assert c.cmd(f"p{len(tdesc.REGISTERS):x}").startswith(b"E")
    assert c.cmd("pzz").startswith(b"E")
    assert c.cmd(f"P{pnum('rax')}=12").startswith(b"E")          # wrong size
    assert c.cmd(f"P{pnum('rax')}=zz00000000000000").startswith(b"E")
    # G: what g gave, with rbx changed
    g = bytearray(bytes.fromhex(regs(c, 2).decode()))
    g[OFF["rbx"]:OFF["rbx"] + 8] = (42).to_bytes(8, "little")
    assert c.cmd("G" + g.hex()) == b"OK"
    assert e.machine.vcpus[1].reg(X.UC_X86_REG_RBX) == 42
    assert c.cmd("G" + g.hex() + "00").startswith(b"E")
    assert c.cmd("G" + g.hex()[:-1]).startswith(b"E")
    assert c.cmd("Hg5").startswith(b"E") and c.cmd("Hx1").startswith(b"E")


# ---- memory ----------------------------------------------------------------------------------------
def test_memory_read_and_write(served):
    e = machine_engine("machine/hello")
    m = e.machine
    _srv, c = served(e)
    entry = e.image.entry
    assert bytes.fromhex(c.cmd(f"m{entry:x},10").decode()) == m.ram.read(entry, 16)
    # X: binary data with every byte the protocol reserves, escaped
    data = b"}#$*\x03\x00\xff"
    assert c.cmd_raw(b"X60000,%x:" % len(data) + escape(data)) == b"OK"
    assert m.ram.read(0x60000, len(data)) == data
    assert c.cmd("X60000,0:") == b"OK"  # gdb's probe for X
    assert c.cmd("M60010,4:01020304") == b"OK"
    assert c.cmd("m60010,4") == b"01020304"
    assert m.ram.read(0x60010, 4) == b"\x01\x02\x03\x04"
    end = m.ram.size
    # beyond RAM: an error; straddling the end of RAM: the readable prefix
    assert c.cmd(f"m{end:x},4") == b"E0e"
    assert c.cmd(f"m{end - 2:x},4") == m.ram.read(end - 2, 2).hex().encode()
    assert c.cmd(f"M{end - 2:x},4:00000000") == b"E0e"
    assert m.ram.read(end - 2, 2) != b"" and c.cmd("m0,0") == b""
    # malformed and hostile requests
    assert c.cmd("m60010,100000000").startswith(b"E")     # huge length
    assert c.cmd("mffffffffffffffff,10").startswith(b"E")  # wraps past 2^64
    assert c.cmd("m60010").startswith(b"E")
    assert c.cmd("mzz,4").startswith(b"E")
    assert c.cmd("M60010,4:0102").startswith(b"E")         # length mismatch
    assert c.cmd("M60010,2:01zz").startswith(b"E")         # bad hex
    assert c.cmd("M60010,2").startswith(b"E")
    assert c.cmd_raw(b"X60010,2:}").startswith(b"E")           # dangling escape
    assert m.ram.read(0x60010, 4) == b"\x01\x02\x03\x04"


def test_memory_goes_through_the_guests_page_tables(served):
    m = Machine(load_image(GUESTS / "machine/paging.elf"), MachineConfig(vcpus=1))
    v = m.vcpus[0]
    for _ in range(20_000):  # run vCPU 0 until it has turned paging on
        v.step()
        if v.reg(X.UC_X86_REG_CR0) & (1 << 31):
            break
    assert v.reg(X.UC_X86_REG_CR0) & (1 << 31)
    _srv, c = served(m)
    test = 0x40000000
    assert c.cmd(f"m{test:x},8") == struct.pack("<Q", 0x4141414141414141).hex().encode()   # frame A
    assert c.cmd(f"m{test + 0x2000:x},8") == struct.pack("<Q", 0x4242424242424242).hex().encode()
    assert c.cmd(f"m{test + 0x1000:x},8") == b"E0e"                  # not present
    assert c.cmd(f"m{test + 0x200000:x},10") == m.ram.read(0x400000, 16).hex().encode()  # 2 MiB page
    # a read-only page: the debugger writes it anyway, into the frame the tables name
    assert c.cmd(f"M{test + 0x2000:x},2:abcd") == b"OK"
    frame_b = v.accel.translate(test + 0x2000, "read", False, False)
    assert m.ram.read(frame_b, 2) == b"\xab\xcd"
    # reads leave the guest's Accessed/Dirty bits alone, and a swapped-out frame is still readable
    m.page_out([frame_b >> 12])
    assert c.cmd(f"m{test + 0x2000:x},2") == b"abcd"


# ---- run control ---------------------------------------------------------------------------------
def test_breakpoint_on_all_vcpus_then_exit(served):
    e = machine_engine("machine/hello", vcpus=2)
    srv, c = served(e)
    c.cmd("qSupported:swbreak+;hwbreak+")
    entry = e.image.entry
    # a breakpoint a few instructions in, so vCPU 0 can step off the entry first
    assert c.cmd(f"Z0,{entry:x},1") == b"OK"
    assert c.cmd(f"Z0,{entry:x},1") == b"OK"        # gdb may insert twice: counted
    first = c.cmd("vCont;c")
    assert first in (b"T05thread:1;swbreak:;", b"T05thread:2;swbreak:;")
    second = c.cmd("vCont;c")
    assert second.startswith(b"T05thread:") and second != first
    assert c.cmd(f"z0,{entry:x},1") == b"OK"
    assert c.cmd(f"z0,{entry:x},1") == b"OK"
    assert c.cmd(f"z0,{entry:x},1") == b"OK"        # removing what is gone is fine
    assert not e.machine.debugger.breakpoints
    assert c.cmd("vCont;c") == b"W01"
    assert c.cmd("?") == b"W01"
    assert c.cmd("vCont;s:1") == b"W01"
    c.close()
    srv._thread.join(5)
    assert srv.result == 1 and not srv._thread.is_alive()


def test_hardware_breakpoint_reports_hwbreak(served):
    e = machine_engine("machine/hello", vcpus=1)
    _srv, c = served(e)
    c.cmd("qSupported:swbreak+;hwbreak+")
    v = e.machine.vcpus[0]
    addr = e.image.symbol("tl_init").addr   # the first function hello calls
    assert c.cmd(f"Z1,{addr:x},1") == b"OK"
    assert c.cmd("c") == b"T05thread:1;hwbreak:;"
    assert v.rip == addr
    assert c.cmd(f"z1,{addr:x},1") == b"OK"
    assert c.cmd("c") == b"W01"


def test_step_runs_one_instruction_of_one_vcpu(served):
    e = machine_engine("machine/hello", vcpus=3)
    m = e.machine
    _srv, c = served(e)
    before = [v.retired for v in m.vcpus]
    assert c.cmd("vCont;s:2;c") == b"T05thread:2;"   # gdb's stepi: step 2, "continue" the rest
    assert [v.retired for v in m.vcpus] == [before[0], before[1] + 1, before[2]]
    assert c.cmd("qC") == b"QC2"                      # the stop thread is the current thread
    assert p_read(c, "rip") == m.vcpus[1].rip != e.image.entry
    assert c.cmd("Hc3") == b"OK"
    assert c.cmd("s") == b"T05thread:3;"
    assert [v.retired for v in m.vcpus] == [before[0], before[1] + 1, before[2] + 1]
    assert c.cmd("vCont;s") == b"T05thread:3;"         # no thread: the current one
    assert c.cmd("vCont;s:9").startswith(b"E")
    assert c.cmd("vCont;x").startswith(b"E") and c.cmd("vCont;").startswith(b"E")
    assert c.cmd("vCont;r1000,2000:1").startswith(b"E")
    assert c.cmd("vCont;S05:1") == b"T05thread:1;"     # a signal is dropped
    # s with an address: resume there
    rip = m.vcpus[0].rip
    assert c.cmd("Hc1") == b"OK"
    assert c.cmd(f"s{rip:x}") == b"T05thread:1;"


def test_stepping_a_halted_vcpu_waits_for_its_interrupt(served):
    e = machine_engine("machine/apic_timer", vcpus=1)
    m = e.machine
    v = m.vcpus[0]
    while v.state is not State.IDLE:  # run to its first `sti; hlt` that waits for the timer
        m.pause_requested = False
        v.step()
        if m.timeline.next_due() is not None and m.timeline.next_due() <= m.now:
            m.timeline.run_due()
    hlt_rip, now = v.rip, m.now
    _srv, c = served(e)
    assert c.cmd("vCont;s:1") == b"T05thread:1;"
    assert v.rip != hlt_rip and m.counts.get("inject", 0) >= 1   # in the timer's handler
    assert m.now > now


def test_write_read_and_access_watchpoints(served):
    e = machine_engine("machine/hello", vcpus=1)
    _srv, c = served(e)
    top = 0x11000   # vCPU 0's boot stack: its first call pushes a return address at top - 8
    assert c.cmd(f"Z2,{top - 8:x},8") == b"OK"
    r = c.cmd("vCont;c")
    assert r == f"T05thread:1;watch:{top - 8:x};".encode()
    assert c.cmd(f"z2,{top - 8:x},8") == b"OK"
    assert c.cmd(f"Z3,{top - 8:x},8") == b"OK"        # the ret reads it back
    assert c.cmd("vCont;c") == f"T05thread:1;rwatch:{top - 8:x};".encode()
    assert c.cmd(f"z3,{top - 8:x},8") == b"OK"
    assert c.cmd(f"Z4,{top - 16:x},16") == b"OK"
    assert c.cmd("vCont;c").startswith(b"T05thread:1;awatch:")
    assert c.cmd(f"z4,{top - 16:x},16") == b"OK"
    assert c.cmd(f"Z2,{top:x},0").startswith(b"E") and c.cmd(f"Z2,{top:x},1000000").startswith(b"E")
    assert c.cmd("Z9,0,1") == b"" and c.cmd("Z0,zz,1").startswith(b"E") and c.cmd("Z0,10").startswith(b"E")
    assert c.cmd("vCont;c") == b"W01"


def _spinner(tmp_path, vcpus=1):
    img = tmp_path / "spin.bin"
    img.write_bytes(b"\x48\xff\xc0\xeb\xfb")  # 1: inc rax; jmp 1b
    return Machine(load_image(img, load_addr=0x100000), MachineConfig(vcpus=vcpus))


def test_ctrl_c_stops_a_running_machine_quickly(served, tmp_path):
    m = _spinner(tmp_path, vcpus=2)
    _srv, c = served(m)
    c.send("vCont;c")
    time.sleep(0.3)
    t0 = time.monotonic()
    c.send_raw(b"\x03")
    r = c.reply(timeout=5)
    latency = time.monotonic() - t0
    assert r.startswith(b"T02thread:")
    assert latency < 0.25, latency
    assert m.now > 1_000_000
    spun = [v.reg(X.UC_X86_REG_RAX) for v in m.vcpus]
    assert c.cmd("m100000,5") == b"48ffc0ebfb"         # the stub answers while stopped
    c.send("c")
    time.sleep(0.1)
    c.send_raw(b"\x03")
    assert c.reply(timeout=5).startswith(b"T02thread:")
    assert [v.reg(X.UC_X86_REG_RAX) for v in m.vcpus] > spun


def test_a_debugged_run_is_the_run(served, guest):
    """Stops, steps of the vCPU that was stopped mid-turn, and the preempter's slices: the guest
    sees the same events at the same virtual times as without a debugger."""
    def events_of(engine):
        return [(x.time, x.kind, x.vcpu) for x in engine.log.events]
    plain = machine_engine("machine/ipi", vcpus=3, quantum=777)
    plain.run()
    e = machine_engine("machine/ipi", vcpus=3, quantum=777)
    srv, c = served(e, slice_seconds=0.001)
    c.cmd("qSupported:swbreak+")
    entry = e.image.entry
    assert c.cmd(f"Z0,{entry:x},1") == b"OK"
    for _ in range(3):
        assert c.cmd("vCont;c").startswith(b"T05thread:")
    assert c.cmd(f"z0,{entry:x},1") == b"OK"
    assert c.cmd("vCont;c") == b"W%02x" % (plain.machine.exit_status & 0xFF)
    assert events_of(e) == events_of(plain)


def test_exit_status_and_detach(served):
    e = machine_engine("machine/hello", vcpus=2)
    srv, c = served(e)
    assert c.cmd(f"Z0,{e.image.entry:x},1") == b"OK"
    c.send("D")
    assert c.reply() == b"OK"
    assert c.closed_by_peer()
    srv._thread.join(10)
    # detached: the breakpoint went with gdb, the run went on to its end
    assert srv.result == 1 and e.machine.exit_requested and not e.machine.debugger.breakpoints


def test_reattach_after_detach_stops_the_running_machine(served, tmp_path):
    m = _spinner(tmp_path)
    srv, c = served(m)
    c.send("D")
    assert c.reply() == b"OK"
    time.sleep(0.2)
    c2 = Rsp(srv.address)
    try:
        assert c2.cmd("?") == b"T05thread:1;"
        now = m.now
        time.sleep(0.1)
        assert m.now == now and now > 0          # stopped while gdb looks
        assert c2.cmd("vCont;s:1") == b"T05thread:1;"
    finally:
        c2.close()


def test_kill_ends_the_run(served):
    e = machine_engine("machine/hello")
    srv, c = served(e)
    c.send("k")
    assert c.closed_by_peer()
    srv._thread.join(5)
    assert srv.result == EXIT_KILLED and e.machine.exit_status == EXIT_KILLED
    assert e.log.events[-1].kind == "exit"


def test_vkill(served):
    e = machine_engine("machine/hello")
    srv, c = served(e)
    assert c.cmd("vKill;1") == b"OK"
    srv._thread.join(5)
    assert srv.result == EXIT_KILLED


# ---- hostile input -----------------------------------------------------------------------------------
def test_bad_checksum_gets_a_nak_and_the_resend_works(served):
    _srv, c = served(machine_engine("machine/hello"))
    c.send_raw(b"$?#00")
    assert c.next_raw_event().__class__.__name__ == "Nak"
    assert c.cmd("?") == b"T05thread:1;"


def test_stub_resends_its_reply_on_nak(served):
    _srv, c = served(machine_engine("machine/hello"))
    c.send_raw(frame("qC"))
    first = c.reply()
    c.send_raw(b"-")
    evs = [c.next_raw_event() for _ in range(1)]
    assert evs == [Packet(first)]


def test_garbage_oversize_and_unknown_packets(served):
    _srv, c = served(machine_engine("machine/hello"))
    c.send_raw(b"garbage\x00\xff\r\n")
    assert c.cmd("qC") == b"QC1"
    big = b"M60000,1:" + b"0" * 40_000
    c.send_raw(b"$" + big + b"#%02x" % checksum(big))
    assert c.reply().startswith(b"E")
    assert c.cmd("?") == b"T05thread:1;"
    assert c.cmd("xyzzy") == b"" and c.cmd("q") == b"" and c.cmd("H") .startswith(b"E")
    c.send_raw(b"$#00")              # an empty packet: an empty reply
    assert c.reply() == b""


def test_random_packets_never_kill_the_stub(served):
    e = machine_engine("machine/hello")
    srv, c = served(e)
    rng = random.Random(7)
    alphabet = b"0123456789abcdefgGmMpPXzZHTqQsScCvD?,;:=-x "
    for i in range(400):
        head = rng.choice([b"m", b"M", b"p", b"P", b"G", b"X", b"Z", b"z", b"H", b"T", b"q", b"Q",
                           b"vCont;", b"qXfer:features:read:", b"qRcmd,", b"qThreadExtraInfo,"])
        body = head + bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        if body.startswith((b"D", b"k", b"vKill")):
            continue
        c.send_raw(b"$" + body + b"#%02x" % checksum(body))
        try:
            c.reply(timeout=10)
        except TimeoutError:
            pytest.fail(f"no reply to {body!r}")
    assert c.cmd("?").startswith((b"T", b"W"))
    assert srv._thread.is_alive()


def test_an_exception_in_the_machine_is_reported_not_fatal(served, monkeypatch):
    e = machine_engine("machine/hello")
    srv, c = served(e)

    def boom(*a, **k):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(e.machine, "step", boom)
    c.send("vCont;c")
    assert c.reply().startswith(b"T06thread:")
    assert any("kaboom" in text for text in c.output)     # told to gdb's console first
    assert c.cmd("vCont;c").startswith(b"E")       # the run can not go on
    assert c.cmd("g")                               # but it can be looked at
    assert srv._thread.is_alive()


def test_no_ack_mode(served):
    _srv, c = served(machine_engine("machine/hello"))
    assert c.cmd("QStartNoAckMode") == b"OK"
    c.send_raw(b"+")
    c.no_ack = True
    c.send_raw(frame("qC"))
    ev = c.next_raw_event()
    assert ev == Packet(b"QC1")  # no '+' before it


# ---- the serve() entry point ------------------------------------------------------------------------
def test_serve_blocks_until_the_run_ends_and_gdb_has_gone():
    e = machine_engine("machine/hello")
    seen = []
    result = {}
    ready = threading.Event()

    def announce(text):
        seen.append(text)
        ready.set()
    server = GdbServer(e, "127.0.0.1", 0, announce=announce)

    t = threading.Thread(target=lambda: result.setdefault("status", server.serve_forever()))
    t.start()
    c = Rsp(server.address)
    assert c.cmd("vCont;c") == b"W01"
    c.close()
    t.join(10)
    assert result["status"] == 1
    assert any("connected" in s for s in seen)


def test_serve_refuses_a_threaded_engine_and_other_targets():
    e = machine_engine("machine/hello")
    e._thread = object()
    with pytest.raises(RuntimeError):
        serve(e, "127.0.0.1", 0, announce=lambda s: None)
    with pytest.raises(TypeError):
        serve(object(), "127.0.0.1", 0, announce=lambda s: None)


def test_serve_background_on_loopback_by_default():
    e = machine_engine("machine/hello")
    srv = serve(e, port=0, background=True, announce=lambda s: None)
    try:
        assert srv.address[0] == "127.0.0.1"
        c = Rsp(srv.address)
        assert c.cmd("?") == b"T05thread:1;"
        c.close()
    finally:
        srv.stop()


def _small_apf_engine():
    from pathlib import Path

    from apfdbg.engine import Engine
    from apfdbg.scenario import load_scenario
    sc = load_scenario(Path(__file__).parent / "apf_small.toml")
    return Engine(load_image(Path(sc.base_dir) / sc.image), sc)


def test_stops_and_ctrl_c_on_the_apf_kernel_do_not_change_the_run(served):
    plain = _small_apf_engine()
    plain.run()
    e = _small_apf_engine()
    _srv, c = served(e, slice_seconds=0.002)
    c.cmd("qSupported:swbreak+")
    pf = e.image.symbol("pf_handler").addr
    assert c.cmd(f"Z0,{pf:x},1") == b"OK"
    for _ in range(5):
        stop = c.cmd("vCont;c")
        assert stop.startswith(b"T05thread:") and stop.endswith(b"swbreak:;")
        assert c.cmd("g")
        assert c.cmd(f"z0,{pf:x},1") == b"OK"      # as gdb does at every stop ...
        assert c.cmd(f"Z0,{pf:x},1") == b"OK"      # ... and at every resume
    assert c.cmd(f"z0,{pf:x},1") == b"OK"
    c.send("vCont;c")
    time.sleep(0.05)
    c.send_raw(b"\x03")
    r = c.reply()
    assert r.startswith((b"T02thread:", b"W"))
    if r != b"W01":
        assert c.cmd("vCont;c") == b"W01"
    assert [(x.time, x.kind, x.vcpu) for x in e.log.events] == [(x.time, x.kind, x.vcpu) for x in plain.log.events]


def test_slices_at_any_instant_do_not_change_any_event(served):
    """Regression: cpuid, in/out and console events were stamped with the time of the last
    settle, which moves with every preemption: under load, a debugged run's trace differed."""
    plain = _small_apf_engine()
    plain.run()
    e = _small_apf_engine()
    _srv, c = served(e, slice_seconds=0.00001)     # preempted every few hundred instructions
    assert c.cmd("vCont;c") == b"W01"
    assert [x.model_dump() for x in e.log.events] == [x.model_dump() for x in plain.log.events]
    assert {x.kind for x in plain.log.events} >= {"cpuid", "console"}


def test_a_second_gdb_is_refused_while_one_is_attached(served):
    srv, c = served(machine_engine("machine/hello"))
    assert c.cmd("?") == b"T05thread:1;"
    other = Rsp(srv.address)
    try:
        assert other.closed_by_peer(timeout=2)
    finally:
        other.close()
    assert c.cmd("qC") == b"QC1"


def _monitor(c, text: str) -> str:
    return bytes.fromhex(c.cmd("qRcmd," + text.encode().hex()).decode()).decode()


def test_monitor_catchpoints_and_apfdbg_breakpoints(served):
    e = _small_apf_engine()
    _srv, c = served(e)
    assert _monitor(c, "catch apf not-present").startswith("catchpoint 1: apf not-present, every vCPU")
    assert _monitor(c, "catch nonsense").startswith("not set: catch 'nonsense'")
    stop = c.cmd("vCont;c")
    np_ev = [x for x in e.log.events if x.kind == "async_pf_not_present"][-1]
    assert stop.startswith(f"T05thread:{np_ev.vcpu + 1:x};".encode()) and b"swbreak" not in stop
    assert any(text.startswith("apfdbg: catchpoint 1: apf not-present") for text in c.output)
    # a conditional file:line breakpoint gdb itself could not express the same way
    assert "apf.c:125 (2 locations)" in _monitor(c, f"break apf.c:125 vcpu {np_ev.vcpu}")
    listing = _monitor(c, "points")
    assert "catch  apf not-present" in listing and "1 hit" in listing and "break  apf.c:125" in listing
    assert _monitor(c, "delete 1") == "deleted point 1\n"
    stop = c.cmd("vCont;c")
    assert stop.startswith(f"T05thread:{np_ev.vcpu + 1:x};".encode())
    assert "breakpoint" in c.output[-1] and "apf.c:125" in c.output[-1]
