"""How an apfdbg process ends: SIGTERM, SIGINT and SIGHUP end every mode cleanly (engine stopped,
trace flushed, terminal restored) with exit status 128 + n, and a process started by `apfdbg serve`
dies with its server (docs/lifecycle.md)."""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import termios
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: set by `apfdbg serve` for its sessions: the server's pid (a session dies with its server)
SERVE_PARENT_ENV = "APFDBG_SERVE_PARENT"
GRACE = 1.5   # seconds a stop signal leaves for the clean way out, then the process exits anyway


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@contextmanager
def signals_call(stop: Callable[[int], None]) -> Iterator[None]:
    """In the block, a stop signal calls `stop(signum)`, which asks the run to end from where it is
    safe (the machine at its next turn boundary, the TUI from its event loop, which restores the
    terminal): a handler that raised could land inside a Unicorn hook, where an exception is lost.
    A second signal of the same kind forces the exit, and so does the end of the GRACE period
    (the trace is written line by line: it stays whole; only its last line, the exit, may miss)."""
    seen: set[int] = set()

    def handler(signum: int, _frame) -> None:
        if signum in seen:
            os._exit(128 + signum)
        if not seen:
            timer = threading.Timer(GRACE, os._exit, (128 + signum,))
            timer.daemon = True
            timer.start()
        seen.add(signum)
        stop(signum)

    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def die_with_parent(parent: int | None = None, sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send `sig` to this process when its parent dies (PR_SET_PDEATHSIG). If `parent`
    (the pid the parent had) is no longer our parent, it died before we asked: send `sig` now.
    False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(sig), 0, 0, 0) != 0:   # PR_SET_PDEATHSIG = 1
            return False
    except (OSError, AttributeError):
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def quiet_print(text: str, stream=None) -> None:
    """Print, unless the terminal has gone (SIGHUP) or the pipe closed: the exit must not fail on it."""
    try:
        print(text, file=stream or sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def terminal_gone() -> bool:
    """The controlling terminal hung up (closed window, dropped ssh): its fds answer EIO. A process
    without a terminal (pipes, textual-serve) has not lost one."""
    for fd in (0, 1, 2):
        try:
            termios.tcgetattr(fd)
            return False
        except termios.error as e:
            if e.args and e.args[0] == errno.EIO:
                return True
        except (OSError, ValueError):
            pass
    return False


def silence_stdio() -> None:
    """Point fds 0-2 at /dev/null, so nothing blocks or fails on a terminal that is gone."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


class Ending:
    """The end of a run, done once from whichever path gets there first (the app's normal exit,
    or a hang-up): the gdb stub and the engine stopped, the trace's last event saying why, closed."""

    def __init__(self, engine, trace_file=None) -> None:
        self.engine, self.trace_file, self.server = engine, trace_file, None
        self._once = threading.Lock()
        self._done = False

    def finish(self, signum: int | None = None) -> None:
        with self._once:
            if self._done:
                return
            self._done = True
            if self.server is not None:
                self.server.stop()
                self.server.close()
            if signum is not None:
                self.engine.stop()
                m = self.engine.machine
                m.request_exit(128 + signum, f"stopped by signal {signal_name(signum)}")
                m.finish()
            if self.trace_file is not None:
                self.trace_file.close()

    def hang_up(self, signum: int) -> None:
        """The terminal is gone: no screen to restore, and Textual's writer may be stuck on it.
        End from a thread of our own, then leave at once."""
        silence_stdio()

        def end() -> None:
            try:
                self.finish(signum)
            finally:
                os._exit(128 + signum)
        threading.Thread(target=end, name="apfdbg-hangup", daemon=True).start()
