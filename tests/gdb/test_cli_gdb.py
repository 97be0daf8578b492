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


# ---- --gdb with the TUI: argument errors, and what the CLI builds -------------------------------
def _cli(argv, capsys):
    from apfdbg.cli import main
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("argv,message", [
    ([str(HELLO), "--gdb", "host:x"], "apfdbg: --gdb: bad port in 'host:x'"),
    ([str(HELLO), "--gdb", "1:70000"], "apfdbg: --gdb: port 70000 out of range"),
    (["run", str(HELLO), "--gdb", "[::1]99", "--tui"], "apfdbg: --gdb: bad address '[::1]99': use [ADDR]:PORT"),
    (["run", str(HELLO), "--gdb", "host:", "--headless"], "apfdbg: --gdb: bad port in 'host:'"),
    (["run", str(HELLO), "--gdb", "0", "--tui", "--headless"], "apfdbg: --tui and --headless exclude each other"),
    (["--tour", "--gdb", "0"], "apfdbg: --tour and --gdb do not go together: gdb drives the run"),
    (["serve", "--gdb", "0"], "apfdbg serve: --gdb is not supported (every browser tab runs its own apfdbg)"),
])
def test_gdb_argument_errors_are_one_line(argv, message, capsys):
    code, err = _cli(argv, capsys)
    assert code == 8 and err == message + "\n"


@pytest.mark.parametrize("tui", [True, False])
def test_a_port_in_use_is_one_line(tui, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        argv = [str(HELLO), "--gdb", f"127.0.0.1:{port}"] if tui else ["run", str(HELLO), "--gdb", str(port)]
        code, err = _cli(argv, capsys)
    assert code == 8 and err == f"apfdbg: --gdb: cannot listen on 127.0.0.1:{port}: Address already in use\n"


@pytest.mark.parametrize("argv", [[str(HELLO), "--gdb", "0"], ["run", str(HELLO), "--gdb", "127.0.0.1:0", "--tui"]])
def test_gdb_with_the_tui_builds_the_shared_app(argv, monkeypatch, capsys):
    """Both spellings open the TUI over an engine the stub drives, on loopback; the stub is closed
    when the app returns (the app itself is not run here)."""
    from apfdbg.gdbstub.tui import GdbApp
    seen = []

    def run(self):
        srv = self.server
        seen.append((self.engine.external, srv.address[0], srv.address[1], srv.shared, self.speed))
        assert _accepts(srv.address)
    monkeypatch.setattr(GdbApp, "run", run)
    assert _cli(argv, capsys) == (0, "")
    [(external, host, port, shared, speed)] = seen
    assert external and shared and host == "127.0.0.1" and port > 0 and speed == "full"
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=2).close()   # closed with the app


def _accepts(address) -> bool:
    """The listener accepts (nothing serves it: the app's mount would start the stub)."""
    with socket.create_connection(address, timeout=5):
        return True
