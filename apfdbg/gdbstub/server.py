"""The GDB remote stub: a TCP server that lets gdb debug the machine, one vCPU per gdb thread.

One thread does everything: it owns the socket and the machine. While gdb waits for a stop (after
``c``/``vCont;c``) the thread runs the machine with ``Machine.step`` and a *preempter* helper
thread interrupts it every ``slice_seconds`` (``pause_requested`` plus a zero block budget, which
stops the vCPU at its next block entry, as Machine.request_pause does), so the socket is looked
at for Ctrl-C between slices. A preempted turn resumes where it stopped, so a debugged run executes
exactly as an undebugged one (tests/gdb/test_server.py checks this).

Stepping (``s``, ``vCont;s:N``) runs one instruction of vCPU N with ``VCpu.step`` while the other
vCPUs stay frozen (gdb's ``set scheduler-locking step``). See docs/gdb.md for the whole contract.

With the TUI (an Engine in external mode, ``Engine.drive_externally``) the serving thread is also
the engine's thread: between slices and packets it runs the TUI's queued commands and publishes
snapshots (``Engine.service``), and tells the engine why the machine stopped (``external_state``).

This module is the session loop and the packet dispatch (one concern, a little over 400 lines); the session state lives on GdbServer.
The packet families are in their own modules: ``connection`` (socket, framing, the preempter),
``queries`` (q packets, features, monitor commands), ``memregs`` (registers, memory, Z/z points),
``runctl`` (continue, step, vCont, kill, stop replies); ``protocol`` and ``target`` as before.
"""
from __future__ import annotations

import argparse
import select
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable

from ..machine.debug import Debugger
from ..machine.machine import Machine
from . import target as tdesc
from .common import (
    E_BADARG,
    E_FAULT,
    E_INTERNAL,
    E_NOTHREAD,
    E_READONLY,
    EXIT_KILLED,
    MAX_READ,
    SIGTRAP,
    log,
)
from .connection import _Point, _Preempter, _Session
from .memregs import MemoryAndPoints
from .protocol import ProtocolError, hexdecode, parse_hex_int, unescape
from .queries import Queries
from .runctl import RunControl


class GdbServer(RunControl, MemoryAndPoints, Queries):
    """Serve the GDB remote protocol for one machine (or the machine of an :class:`Engine`).

    The machine belongs to the serving thread from construction on: nothing else may run or
    touch it until :meth:`serve_forever` returns (or :meth:`stop` was called).
    """

    def __init__(self, target: Any, host: str = "127.0.0.1", port: int = 1234, *,
                 slice_seconds: float = 0.02, announce: Callable[[str], None] | None = None) -> None:
        if isinstance(target, Machine):
            self.engine, self.machine = None, target
        elif isinstance(getattr(target, "machine", None), Machine):
            if getattr(target, "_thread", None) is not None:
                raise RuntimeError("the engine already runs on its own thread: the gdb stub drives the "
                                   "machine itself (call engine.drive_externally() instead of start())")
            self.engine, self.machine = target, target.machine
        else:
            raise TypeError(f"serve() wants an Engine or a Machine, not {type(target).__name__}")
        m = self.machine
        if not m.vcpus:
            raise ValueError("the machine is closed")
        self.debugger: Debugger = m.debugger if m.debugger is not None else Debugger(m)
        self.announce = announce or (lambda text: None)
        self.slice_seconds = slice_seconds
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
            self.listener.listen(1)
        except OSError:
            self.listener.close()
            raise
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._preempter = _Preempter(m, slice_seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sess: _Session | None = None
        self.mode = "stopped"            # stopped, running (gdb waits for a stop), free (detached)
        self.stop_thread = 0             # vCPU index of the last stop
        self.g_thread: int | None = None  # Hg (None: the stop thread)
        self.c_thread: int | None = None  # Hc
        self.points: dict[tuple[int, int, int], _Point] = {}
        self.point_kinds: dict[int, int] = {}  # debugger point id -> Z type
        self.last_stop = self._stop_reply(SIGTRAP, 0)
        self.killed = False
        self.broken: str | None = None   # the machine raised: the run can not go on
        self.sessions = 0
        self.finished = False
        self.result: int | None = None
        self._count_ready: set[int] = set()  # vCPUs whose code was translated for stepping
        # shared with the TUI (engine in external mode)
        self._dirty = False              # publish a snapshot at the next service, whatever the rate
        self._why = ""                   # why the machine is stopped, in words (the TUI's status bar)
        self.fatal: str | None = None    # the serving thread gave up with this error
        self._service_errors = 0

    def start(self) -> threading.Thread:
        """Serve on a daemon thread (the caller must leave the machine alone until it ends)."""
        self._thread = threading.Thread(target=self.serve_forever, name="apfdbg-gdbstub", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def close(self) -> None:
        self._preempter.close()
        if self.sess is not None:
            self.sess.close()
        try:
            self.listener.close()
        except OSError:
            pass

    def serve_forever(self) -> int | None:
        """Serve until the run has ended and no gdb is attached (returns the exit status), gdb
        killed the run (returns EXIT_KILLED), or :meth:`stop` was called (returns None).

        Shared with the TUI, only :meth:`stop` ends it: the TUI still shows the ended run, and a
        gdb may still attach to look at it."""
        errors = 0
        try:
            if self.shared:
                h, p = self.address[:2]
                self._why = f"waiting for gdb: target remote {h}:{p}"
                self._say(f"gdb stub listening on {h}:{p} (in gdb: target remote {h}:{p})")
            while not self._stop.is_set():
                try:
                    if self.sess is None:
                        if self._exited() and not self.shared:
                            self.result = self.machine.exit_status
                            return self.result
                        if self.mode == "free":
                            self._run_slice()
                            self._accept(0)
                        else:
                            self._accept(self._wait)
                        self._service()
                        continue
                    self._serve_session_once()
                    if self.sess is not None and self.sess.closed:
                        self._end_session()
                        if self.killed and not self.shared:
                            self.result = EXIT_KILLED
                            return self.result
                    self._service()
                    errors = 0
                except Exception as e:  # never let the serving thread die
                    log.error("gdb stub: internal error\n%s", traceback.format_exc())
                    if self.mode == "running":
                        self.mode = "stopped"
                    errors += 1
                    if self.shared:
                        if errors >= 50:
                            self._give_up(f"gdb stub stopped: {type(e).__name__}: {e}")
                            return None
                        self._say(f"gdb stub: internal error: {type(e).__name__}: {e}")
                    if errors >= 50 and self.sess is not None:  # a loop that keeps failing
                        self.sess.closed = True
                    time.sleep(0.01)
            return None
        except BaseException as e:
            if self.shared:  # the TUI must not wait for a thread that is gone
                self._give_up(f"gdb stub stopped: {type(e).__name__}: {e}")
            raise
        finally:
            self.close()

    @property
    def shared(self) -> bool:
        """The TUI shows this engine: service it from this thread (Engine.drive_externally)."""
        return self.engine is not None and bool(getattr(self.engine, "external", False))

    @property
    def _wait(self) -> float:
        return 0.05 if self.shared else 0.1  # the TUI's commands wait at most this long

    def _say(self, text: str) -> None:
        self.announce(text)
        if self.shared:
            self.engine.message = text
            self._dirty = True

    def _stopped(self, why: str) -> None:
        self._why = why
        self._dirty = True

    def _describe_addr(self, rip: int) -> str:
        image = getattr(self.machine, "image", None)
        try:
            return image.describe(rip) if image is not None and hasattr(image, "describe") else f"{rip:#x}"
        except Exception:
            return f"{rip:#x}"

    def _where(self, vcpu: int, rip: int | None = None) -> str:
        if rip is None:
            rip = self.machine.vcpus[vcpu].rip
        return f"{self._describe_addr(rip)} on vCPU {vcpu}"

    def _service(self, force: bool = False) -> None:
        """Run the TUI's queued commands and publish a snapshot (this thread owns the machine)."""
        if not self.shared:
            return
        eng = self.engine
        force = force or self._dirty
        self._dirty = False
        running = self.mode in ("running", "free") and not self._exited() and not self.broken
        # said at every call: a UI pause() (the speed keys) must not make the status bar lie
        eng.external_state(running, "" if running else self._why)
        try:
            eng.service(force)
            self._service_errors = 0
        except Exception as e:  # a command (or a snapshot) failed: say so; the rest run next time
            log.error("servicing the TUI failed\n%s", traceback.format_exc())
            eng.message = f"command failed: {type(e).__name__}: {e}"
            self._dirty = True
            self._service_errors += 1
            if self._service_errors >= 50:  # it can not show anything: end rather than hide it
                self._give_up(f"gdb stub stopped: the TUI's snapshots fail: {type(e).__name__}: {e}")
                self._stop.set()

    def _give_up(self, text: str) -> None:
        """The serving thread ends with an error: the TUI shows it."""
        log.error("%s", text)
        self.fatal = text
        eng = self.engine
        try:
            eng.error = text
            eng.external_state(False, text)
            eng.service(force=True)
        except Exception:
            log.error("publishing the error failed\n%s", traceback.format_exc())

    def _accept(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self.listener], [], [], timeout)
        except (OSError, ValueError):
            self._stop.set()
            return
        if not ready:
            return
        try:
            conn, peer = self.listener.accept()
        except OSError:
            return
        self.sess = _Session(conn, peer)
        self.sessions += 1
        self.g_thread = self.c_thread = None
        if self.mode == "free":  # gdb attaches to a running machine: it stops, as under QEMU
            self.mode = "stopped"
            self.stop_thread = self._current_vcpu()
            self.last_stop = self._stop_reply(SIGTRAP, self.stop_thread)
            self._stopped(f"gdb attached: stopped at {self._where(self.stop_thread)}")
        elif self._why.startswith("waiting for gdb"):
            self._stopped(f"gdb connected: stopped at {self._where(self.stop_thread)}")
        if self._exited():
            self.last_stop = self._exit_reply()
        self._say(f"gdb connected from {peer[0]}:{peer[1]}")
        log.info("gdb connected from %s", peer)

    def _refuse_second_gdb(self) -> None:
        """One gdb at a time: another connection is closed at once rather than left hanging."""
        try:
            ready, _, _ = select.select([self.listener], [], [], 0)
            if ready:
                conn, peer = self.listener.accept()
                conn.close()
                log.info("refused a second gdb connection from %s", peer)
        except OSError:
            pass

    def _end_session(self) -> None:
        """The connection is gone (detach, kill, or lost): drop gdb's points; the run goes on."""
        sess = self.sess
        self.sess = None
        if sess is not None:
            sess.close()
        self._remove_all_points()
        if self.killed or self._exited():
            self.mode = "stopped"
        else:
            self.mode = "free"
        self._say("gdb detached" + (": the run goes on" if self.mode == "free" else ""))

    def _serve_session_once(self) -> None:
        sess = self.sess
        assert sess is not None
        self._refuse_second_gdb()
        if self.mode == "running":
            self._run_slice()
            events = sess.receive(0)
        else:
            events = sess.receive(self._wait)
        for ev in events:
            if sess.closed:
                break
            self._on_event(ev)
        if self._dirty:
            self._service(force=True)

    def dispatch(self, payload: bytes) -> object:
        """The reply to one packet (a str), _RESUMED, or None (no reply). Never raises."""
        try:
            return self._dispatch(payload)
        except ProtocolError as e:
            log.info("bad packet %r: %s", payload[:60], e)
            return E_BADARG
        except Exception:  # a bug, not the packet's fault: the parsers raise ProtocolError
            log.error("gdb stub: packet %r failed\n%s", payload[:60], traceback.format_exc())
            return E_INTERNAL

    def _dispatch(self, p: bytes) -> object:
        if not p:
            return ""
        c = chr(p[0])
        body = p[1:]
        if c == "?":
            return self.last_stop
        if c == "g":
            return tdesc.read_all(self._gvcpu()).hex()
        if c == "G":
            v = self._gvcpu()
            rip = v.rip
            try:
                tdesc.write_all(v, hexdecode(body))
            except tdesc.ReadOnlyRegister:
                return E_READONLY
            self._moved(v, rip)
            return "OK"
        if c == "p":
            n = parse_hex_int(body, "register")
            if n >= len(tdesc.REGISTERS):
                return E_BADARG
            return tdesc.read_register(self._gvcpu(), n).hex()
        if c == "P":
            num, _, val = body.partition(b"=")
            n = parse_hex_int(num, "register")
            if n >= len(tdesc.REGISTERS):
                return E_BADARG
            v = self._gvcpu()
            rip = v.rip
            try:
                tdesc.write_register(v, n, hexdecode(val))
            except tdesc.ReadOnlyRegister:
                return E_READONLY
            self._moved(v, rip)
            return "OK"
        if c == "m":
            addr, length = self._addr_len(body)
            if length > MAX_READ:
                return E_BADARG
            data = self._read_memory(self._gvcpu(), addr, length)
            if not data and length:
                return E_FAULT
            return data.hex()
        if c == "M":
            head, sep, data = body.partition(b":")
            if not sep:
                raise ProtocolError("M without ':'")
            addr, length = self._addr_len(head)
            raw = hexdecode(data)
            if len(raw) != length:
                return E_BADARG
            return self._write_memory(self._gvcpu(), addr, raw)
        if c == "X":
            head, sep, data = body.partition(b":")
            if not sep:
                raise ProtocolError("X without ':'")
            addr, length = self._addr_len(head)
            raw = unescape(data)
            if len(raw) != length:
                return E_BADARG
            return self._write_memory(self._gvcpu(), addr, raw)
        if c in "Zz":
            return self._point(c == "Z", body)
        if c == "H":
            op, tid = chr(body[0]) if body else "", self._parse_tid(body[1:])
            if tid is not None and tid != -1 and not self._valid(tid):
                return E_NOTHREAD
            vcpu = None if tid in (None, 0, -1) else tid - 1
            if op == "g":
                self.g_thread = vcpu
            elif op == "c":
                self.c_thread = vcpu
            else:
                return E_BADARG
            return "OK"
        if c == "T":
            tid = self._parse_tid(body)
            return "OK" if tid is not None and self._valid(tid) else E_NOTHREAD
        if c in "cC":
            return self._legacy_resume(False, c == "C", body)
        if c in "sS":
            return self._legacy_resume(True, c == "S", body)
        if c == "D":
            self.sess.send("OK")
            self.sess.closed = True  # _end_session: points removed, the run goes on
            return None
        if c == "k":
            return self._kill()
        if c == "v":
            return self._v_packet(p)
        if c == "q":
            return self._query(p)
        if c == "Q":
            if p == b"QStartNoAckMode":
                self.sess.send("OK")
                self.sess.no_ack = True
                return None
            return ""
        return ""  # anything else: not supported (the empty reply)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6ADDR]:PORT``, ``:PORT`` or ``PORT`` (loopback) -> (host, port).

    Raises argparse.ArgumentTypeError, so it can be an argparse ``type=``."""
    host, port = "127.0.0.1", text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise argparse.ArgumentTypeError(f"bad address {text!r}: use [ADDR]:PORT")
        host, port = text[1:end], text[end + 2:]
    elif ":" in text:
        host, port = text.rsplit(":", 1)
        host = host or "127.0.0.1"
    try:
        p = int(port, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"port {p} out of range")
    return host, p


def serve(target: Any, host: str = "127.0.0.1", port: int = 1234, *, background: bool = False,
          slice_seconds: float = 0.02, announce: Callable[[str], None] | None = None,
          started: Callable[["GdbServer"], None] | None = None):
    """Serve the GDB remote protocol for `target` (an Engine or a Machine) on host:port.

    Blocking (default): returns when the run has ended and gdb has gone, with the run's exit status
    (EXIT_KILLED after gdb's ``kill``). ``background=True``: returns the started
    :class:`GdbServer` at once (its ``address`` has the port when `port` is 0); the machine then
    belongs to the server's thread until the server ends.

    `announce` gets one-line status messages (listening, connected, detached, exited); the default
    prints them to stderr with an ``apfdbg:`` prefix. `started` gets the server before it serves
    (so a signal handler can stop it).
    """
    if announce is None:
        def announce(text: str) -> None:
            print(f"apfdbg: {text}", file=sys.stderr, flush=True)
    server = GdbServer(target, host, port, slice_seconds=slice_seconds, announce=announce)
    h, p = server.address
    if not server.shared:  # shared with the TUI: the serving thread says it, in the status bar too
        announce(f"gdb stub listening on {h}:{p} (in gdb: target remote {h}:{p})")
    if started is not None:
        started(server)
    if background:
        server.start()
        return server
    try:
        return server.serve_forever()
    except KeyboardInterrupt:
        return None

