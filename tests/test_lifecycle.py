"""How apfdbg processes end (docs/lifecycle.md), with real processes and real signals: SIGTERM, SIGINT
and SIGHUP end a headless run, the TUI and a gdb-stub run within 2 s with status 128 + n, the trace
whole; `kill -9` leaves a trace that is a prefix of the full run's."""
from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from apfdbg.events import parse_line

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "guests" / "apfdemo" / "apfdemo.elf"
SCENARIO = REPO / "apfdbg" / "scenarios" / "default.toml"
CAP = 8_000_000
STOPS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


def _cmd(trace: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "apfdbg", "run", str(DEMO), "--scenario", str(SCENARIO),
            "--trace", str(trace), *extra]


def _lines(trace: Path) -> list[str]:
    text = trace.read_text()
    assert text == "" or text.endswith("\n"), "the trace ends in the middle of a line"
    lines = text.splitlines()
    for line in lines:
        parse_line(line)   # raises if a line does not parse
    return lines


@pytest.fixture(scope="module")
def full_trace(tmp_path_factory) -> list[str]:
    trace = tmp_path_factory.mktemp("full") / "full.jsonl"
    p = subprocess.run(_cmd(trace, "--headless", "--max-insns", str(CAP)), capture_output=True, text=True,
                       timeout=300, cwd=trace.parent)
    assert "instruction limit" in p.stdout, p.stdout + p.stderr
    return _lines(trace)


def _ends_with_the_signal(lines: list[str], full: list[str] | None, sig: int) -> None:
    """The trace of a stopped run: a prefix of the full run's, then the exit event saying why."""
    last = parse_line(lines[-1])
    assert (last.kind, last.status, last.reason) == ("exit", 128 + sig, f"stopped by signal {sig.name}")
    body = lines[:-1]
    while body and (e := parse_line(body[-1])).kind == "console" and not e.text.endswith("\n"):
        body.pop()   # the console line the guest was writing, flushed unfinished at the end
    if full is not None:
        assert body == full[:len(body)] and len(body) < len(full)


def _wait_for_lines(trace: Path, n: int, proc: subprocess.Popen | None = None, timeout: float = 60,
                    pty_fd: int | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if trace.exists() and trace.read_bytes().count(b"\n") >= n:
            return
        assert proc is None or proc.poll() is None, "the run ended before it could be stopped"
        if pty_fd is None:
            time.sleep(0.02)
        else:   # keep reading the screen, or the app blocks on a full pty
            _read_pty(pty_fd, 0.02)
    raise AssertionError(f"fewer than {n} trace lines after {timeout} s")


def _wait(proc: subprocess.Popen, seconds: float = 2.0) -> tuple[int, float]:
    t0 = time.monotonic()
    try:
        rc = proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running {seconds} s after the signal") from None
    return rc, time.monotonic() - t0


def _headless(trace: Path) -> subprocess.Popen:
    return subprocess.Popen(_cmd(trace, "--headless", "--max-insns", str(CAP)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=trace.parent)


def test_kill_9_leaves_a_prefix_of_the_full_trace(tmp_path, full_trace):
    trace = tmp_path / "killed.jsonl"
    proc = _headless(trace)
    _wait_for_lines(trace, len(full_trace) // 3, proc)
    proc.kill()
    assert proc.wait(5) == -signal.SIGKILL
    lines = _lines(trace)
    assert len(full_trace) // 3 <= len(lines) < len(full_trace)
    assert lines == full_trace[:len(lines)]


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_stop_signals_end_a_headless_run(tmp_path, full_trace, sig):
    trace = tmp_path / "stopped.jsonl"
    proc = _headless(trace)
    _wait_for_lines(trace, len(full_trace) // 3, proc)
    proc.send_signal(sig)
    rc, _ = _wait(proc)
    assert rc == 128 + sig, proc.stderr.read()
    assert f"stopped by signal {sig.name}" in proc.stderr.read()
    _ends_with_the_signal(_lines(trace), full_trace, sig)


def _read_pty(fd: int, seconds: float, until: bytes | None = None) -> bytes:
    out, end = b"", time.monotonic() + seconds
    while time.monotonic() < end and not (until and until in out):
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:   # the child closed its end
                break
            if not chunk:
                break
            out += chunk
    return out


def _tui(trace: Path, *extra: str) -> tuple[int, int]:
    """The TUI on a pty that is its controlling terminal (as in a terminal emulator)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.chdir(trace.parent)
        os.environ.update(TERM="xterm-256color", COLUMNS="160", LINES="50")
        os.execv(sys.executable, _cmd(trace, *extra))
    return pid, fd


def _waitpid(pid: int, seconds: float = 2.0) -> int:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        p, status = os.waitpid(pid, os.WNOHANG)
        if p:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"still running {seconds} s after the signal")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_stop_signals_end_the_tui_and_restore_the_terminal(tmp_path, full_trace, sig):
    trace = tmp_path / "tui.jsonl"
    pid, fd = _tui(trace)
    try:
        before = termios.tcgetattr(fd)[3]
        screen = _read_pty(fd, 60, until=b"\x1b[?1049h")
        _wait_for_lines(trace, 50, pty_fd=fd)
        raw = termios.tcgetattr(fd)[3]
        assert not raw & termios.ECHO and not raw & termios.ICANON, "the app did not put the tty in raw mode"
        assert b"\x1b[?1049h" in screen    # the alternate screen
        os.kill(pid, sig)
        t0 = time.monotonic()
        tail = b""
        end = time.monotonic() + 2
        while time.monotonic() < end:
            tail += _read_pty(fd, 0.1)
            p, status = os.waitpid(pid, os.WNOHANG)
            if p:
                break
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the TUI still runs 2 s after the signal")
        tail += _read_pty(fd, 0.2)
        assert os.waitstatus_to_exitcode(status) == 128 + sig, tail[-500:]
        assert time.monotonic() - t0 < 2
        assert b"\x1b[?1049l" in tail, "the alternate screen was not left"
        assert termios.tcgetattr(fd)[3] == before, "the terminal modes were not restored"
        assert b"Traceback" not in tail
    finally:
        os.close(fd)
    _ends_with_the_signal(_lines(trace), full_trace, sig)


def test_a_closed_terminal_ends_the_tui_with_the_trace_whole(tmp_path, full_trace):
    """Closing the terminal (the pty master) hangs up the TUI's controlling tty: SIGHUP."""
    trace = tmp_path / "tui.jsonl"
    pid, fd = _tui(trace)
    _read_pty(fd, 60, until=b"\x1b[?1049h")
    _wait_for_lines(trace, 50, pty_fd=fd)
    os.close(fd)
    assert _waitpid(pid) == 128 + signal.SIGHUP
    _ends_with_the_signal(_lines(trace), full_trace, signal.SIGHUP)


def _rsp(sock: socket.socket, payload: bytes) -> bytes:
    """Send one packet, return the first reply packet's payload."""
    csum = sum(payload) % 256
    sock.sendall(b"$" + payload + b"#%02x" % csum)
    data = b""
    while not re.search(rb"\$([^#]*)#..", data):
        chunk = sock.recv(4096)
        assert chunk, "the stub hung up"
        data += chunk
    return re.search(rb"\$([^#]*)#..", data).group(1)


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_stop_signals_end_a_gdb_run_with_a_client_attached(tmp_path, sig):
    trace = tmp_path / "gdb.jsonl"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(_cmd(trace, "--gdb", f"127.0.0.1:{port}"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        end = time.monotonic() + 60
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < end, "the stub did not listen"
                time.sleep(0.05)
        with sock:
            assert _rsp(sock, b"?").startswith(b"T")
            sock.sendall(b"$c#63")             # continue: the guest runs under the stub
            _wait_for_lines(trace, 100, proc)
            proc.send_signal(sig)
            rc, _ = _wait(proc)
        assert rc == 128 + sig, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    _ends_with_the_signal(_lines(trace), None, sig)


def _served_session() -> subprocess.Popen:
    """apfdbg as `apfdbg serve` runs it for a tab: the web driver on pipes, no terminal."""
    env = dict(os.environ, TEXTUAL_DRIVER="apfdbg.ui.webdriver:ServedDriver", COLUMNS="120", ROWS="40")
    proc = subprocess.Popen([sys.executable, "-m", "apfdbg"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    t0 = time.monotonic()
    seen = b""
    while b"__GANGLION__" not in seen:   # the driver's hello: the app runs
        assert time.monotonic() - t0 < 60, proc.stderr.read1(4096) if proc.poll() is not None else "no hello"
        if select.select([proc.stdout], [], [], 0.1)[0]:
            seen += proc.stdout.read1(1 << 16)
    # keep its output flowing, as the server does
    threading.Thread(target=lambda: [None for _ in iter(lambda: proc.stdout.read1(1 << 16), b"")],
                     daemon=True).start()
    return proc


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_stop_signals_end_a_served_session(sig):
    proc = _served_session()
    time.sleep(0.5)
    proc.send_signal(sig)
    rc, took = _wait(proc)
    assert rc == 128 + sig and took < 2, (rc, took, proc.stderr.read()[-2000:])


def test_a_served_session_ends_when_its_input_closes():
    """The server died or dropped the session: stdin closes; the app ends instead of running on."""
    proc = _served_session()
    time.sleep(0.5)
    proc.stdin.close()
    rc, took = _wait(proc)
    assert rc == 0 and took < 2, (rc, took)
