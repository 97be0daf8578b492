"""`python -m apfdbg.gdbstub IMAGE --listen HOST:PORT`: a process gdb can attach to."""
import argparse
import re
import subprocess
import sys

import pytest

from apfdbg.gdbstub import parse_listen

from .rsp import GUESTS, ROOT, Rsp


def test_parse_listen():
    assert parse_listen("127.0.0.1:1234") == ("127.0.0.1", 1234)
    assert parse_listen("1234") == ("127.0.0.1", 1234)
    assert parse_listen(":1234") == ("127.0.0.1", 1234)
    assert parse_listen("[::1]:99") == ("::1", 99)
    for bad in ("host:", "host:x", "1:70000", "[::1]99"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_listen(bad)


def test_module_serves_a_guest_and_exits_with_its_status():
    proc = subprocess.Popen([sys.executable, "-m", "apfdbg.gdbstub", str(GUESTS / "machine" / "hello.elf"),
                             "--vcpus", "2", "--listen", "127.0.0.1:0"], cwd=ROOT,
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert m, line
        c = Rsp(("127.0.0.1", int(m.group(1))))
        assert c.cmd("qfThreadInfo") == b"m1,2"
        assert c.cmd("vCont;c") == b"W01"
        c.close()
        assert proc.wait(timeout=20) == 1
    finally:
        proc.kill()
        proc.wait()


def test_module_reports_a_bad_image():
    res = subprocess.run([sys.executable, "-m", "apfdbg.gdbstub", "/nonexistent.elf"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 8 and "cannot read image" in res.stderr
