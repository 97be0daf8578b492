"""`apfdbg run IMAGE --gdb PORT`: the stub behind the CLI, driven by Debian's gdb."""
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "guests" / "machine" / "hello.elf"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("gdb") is None, reason="Debian's gdb is not installed")
def test_run_with_gdb_flag_serves_and_exits_with_the_guest_status():
    port = _free_port()
    stub = subprocess.Popen([sys.executable, "-m", "apfdbg", "run", str(HELLO), "--gdb", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = stub.stderr.readline()  # "apfdbg: gdb stub listening on ..."
        assert "listening" in line, line
        out = subprocess.run(["gdb", "-nx", "-batch", "-ex", f"target remote 127.0.0.1:{port}",
                              "-ex", "info threads", "-ex", "continue", str(HELLO)],
                             capture_output=True, text=True, timeout=60).stdout
        assert "vCPU 1" in out and "exited with code 01" in out
        assert stub.wait(timeout=30) == 1
    finally:
        stub.kill()
