"""Debian's gdb, in batch mode, against the stub: the reference kernel under a host that pages its
task pages out (tests/gdb/apf_small.toml), stopped in its async-PF handler."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from apfdbg.engine import Engine
from apfdbg.gdbstub import serve
from apfdbg.machine.image import load_image
from apfdbg.scenario import load_scenario

from .rsp import GUESTS, machine_engine

GDB = shutil.which("gdb")
pytestmark = pytest.mark.skipif(
    GDB is None, reason="gdb is not installed: the end-to-end tests drive Debian's gdb (apt-get install gdb)")

HERE = Path(__file__).resolve().parent
REFKERNEL = GUESTS / "refkernel" / "refkernel.elf"


def run_gdb(address, commands: str, elf: Path | None, timeout: float = 60) -> str:
    host, port = address
    script = ["set pagination off", "set confirm off", "set width 0"]
    if elf is not None:
        script.append(f"file {elf}")
    script.append(f"target remote {host}:{port}")
    script += [line.strip() for line in commands.strip().splitlines()]
    args = [GDB, "-nx", "-batch"]
    for line in script:
        args += ["-ex", line]
    # -ex cannot hold a multi-line `while`: those go through a command file
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return res.stdout + res.stderr


def run_gdb_script(address, text: str, elf: Path, tmp_path: Path, timeout: float = 60) -> str:
    host, port = address
    f = tmp_path / "session.gdb"
    f.write_text("set pagination off\nset confirm off\nset width 0\n"
                 f"file {elf}\ntarget remote {host}:{port}\n" + text)
    res = subprocess.run([GDB, "-nx", "-batch", "-x", str(f)], capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    return res.stdout + res.stderr


def value(out: str, key: str) -> int:
    m = re.search(rf"^{key}=(\S+)$", out, re.M)
    assert m, f"{key} missing from gdb's output:\n{out[-3000:]}"
    return int(m.group(1), 0)


def test_gdb_stops_in_the_async_pf_handler_steps_to_iretq_and_runs_to_the_exit(tmp_path):
    sc = load_scenario(HERE / "apf_small.toml")
    engine = Engine(load_image(Path(sc.base_dir) / sc.image), sc)
    server = serve(engine, "127.0.0.1", 0, background=True, announce=lambda text: None)
    try:
        out = run_gdb_script(server.address, """
break pf_handler if apf_reason_area[$_thread - 1].reason == 1
continue
printf "THREAD=%d\\n", $_thread
printf "CR2=%#lx\\n", $cr2
printf "REASON=%u\\n", apf_reason_area[$_thread - 1].reason
x/wx &apf_reason_area[$_thread - 1]
info threads
set $n = 0
while *(unsigned short *)$pc != 0xcf48 && $n < 5000
  stepi
  set $n = $n + 1
end
printf "STEPS=%d\\n", $n
x/i $pc
stepi
printf "AFTER=%#lx\\n", $pc
printf "CS=%#x\\n", $cs
delete
continue
""", REFKERNEL, tmp_path)
        server._thread.join(30)
    finally:
        server.stop()
    assert "Breakpoint 1, pf_handler" in out, out[-3000:]
    thread, cr2 = value(out, "THREAD"), value(out, "CR2")
    vcpu = thread - 1
    # not present: reason 1 in the vCPU's area, CR2 = the token, whose low 12 bits are the vCPU
    assert value(out, "REASON") == 1
    assert re.search(r"<apf_reason_area(\+\d+)?>:\s+0x00000001", out), out[-3000:]
    assert cr2 & 0xFFF == vcpu
    # ... and the host did inject exactly that: a not-present #PF with this token on this vCPU
    np_ = [x for x in engine.log.events if x.kind == "async_pf_not_present" and x.vcpu == vcpu]
    assert any(x.token == cr2 and x.delivery == "pf" for x in np_)
    assert any(x.kind == "inject" and x.vector == 14 and x.cr2 == cr2 and x.vcpu == vcpu
               for x in engine.log.events)
    # every vCPU is a thread
    assert all(f"Thread {i + 1} (vCPU {i}" in out for i in range(2)), out[-3000:]
    # stepped to the iretq and over it
    assert 0 < value(out, "STEPS") < 5000
    assert re.search(r"=> 0x[0-9a-f]+ <[^>]+>:\s+iretq", out), out[-3000:]
    assert value(out, "AFTER") != 0
    # then ran to the guest's exit
    assert "exited with code 01" in out, out[-3000:]
    assert server.result == 1 and engine.machine.exit_status == 1


def test_gdb_threads_registers_watchpoint_and_kill(tmp_path):
    engine = machine_engine("machine/hello", vcpus=3)
    server = serve(engine, "127.0.0.1", 0, background=True, announce=lambda text: None)
    elf = GUESTS / "machine" / "hello.elf"
    try:
        out = run_gdb_script(server.address, """
info threads
thread 3
printf "RDI3=%d\\n", $rdi
printf "RSP3=%#lx\\n", $rsp
printf "EFER=%#lx\\n", $efer
p $cr0
thread 1
printf "RDI1=%d\\n", $rdi
watch *(long *)0x10ff8
continue
printf "WATCHED=%#lx\\n", *(long *)0x10ff8
delete
stepi
monitor vcpus
kill
""", elf, tmp_path)
        server._thread.join(30)
    finally:
        server.stop()
    assert "Thread 3 (vCPU 2" in out, out[-3000:]
    assert value(out, "RDI3") == 2 and value(out, "RSP3") == 0x13000
    assert value(out, "EFER") & 0x500 == 0x500
    assert "PE" in out and value(out, "RDI1") == 0
    assert "Hardware watchpoint 1" in out and value(out, "WATCHED") != 0, out[-3000:]
    assert "vCPU 0 (thread 1)" in out
    assert server.result == 12 and engine.machine.exit_status == 12


def test_gdb_catches_a_page_ready_through_monitor(tmp_path):
    sc = load_scenario(HERE / "apf_small.toml")
    engine = Engine(load_image(Path(sc.base_dir) / sc.image), sc)
    server = serve(engine, "127.0.0.1", 0, background=True, announce=lambda text: None)
    try:
        out = run_gdb(server.address, """
            monitor catch apf ready
            continue
            printf "rip=%#lx\\n", $rip
            monitor points
            kill
        """, REFKERNEL)
    finally:
        server.stop()
    ready = [e for e in engine.log.events if e.kind == "async_pf_ready"]
    assert ready, out
    assert "catchpoint 1: apf ready, every vCPU" in out
    assert f"apfdbg: catchpoint 1: apf ready (event async_pf_ready at time {ready[0].time:,})" in out
    assert "SIGTRAP" in out and "catch  apf ready" in out and "1 hit" in out
    assert value(out, "rip") == engine.machine.vcpus[ready[0].vcpu].rip
