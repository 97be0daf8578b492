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
"""
from __future__ import annotations

import argparse
import logging
import select
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from ..machine.debug import Debugger
from ..machine.machine import EXIT_LIMIT, Machine
from ..machine.vcpu import State
from unicorn.x86_const import UC_X86_REG_RIP
from . import target as tdesc
from .protocol import (ACK, INTERRUPT, NAK, PACKET_SIZE, BadPacket, Packet, PacketReader,
                       ProtocolError, frame, hexdecode, parse_hex_int, unescape)

log = logging.getLogger("apfdbg.gdbstub")

PAGE = 4096
#: Largest ``m`` read: the hex reply must fit in PacketSize.
MAX_READ = PACKET_SIZE // 2 - 16
#: Largest watchpoint range (a Unicorn memory hook range; gdb asks for the whole watched object).
MAX_WATCH = 1 << 20
#: The run's exit status after gdb's ``k`` (kill): even, like the machine's own statuses.
EXIT_KILLED = 12
SIGINT, SIGTRAP, SIGABRT = 2, 5, 6

# error replies (errno values, in hex, as gdbserver does)
E_BADARG = "E16"      # EINVAL: malformed packet, bad hex, bad length
E_FAULT = "E0e"       # EFAULT: memory not mapped (or beyond RAM)
E_NOTHREAD = "E03"    # ESRCH: no such vCPU
E_READONLY = "E0d"    # EACCES: read-only register
E_INTERNAL = "E05"    # EIO: the stub or the machine failed (logged)

_RESUMED = object()   # a handler started the machine: the stop reply comes later
#: packets that change what the TUI shows (registers, memory, points, run state)
_CHANGES = frozenset(bytes([c]) for c in b"GPMXZzcCsSvDk")

POINT_KINDS = {0: "sw", 1: "hw", 2: "write", 3: "read", 4: "access"}


@dataclass
class _Point:
    id: int
    refs: int = 1


class _Preempter:
    """Helper thread: while armed, interrupts the machine every `interval` seconds.

    Disarming is synchronous (under the lock), so after :meth:`disarm` returns no poke can land
    while the serving thread single-steps a vCPU."""

    def __init__(self, machine: Machine, interval: float) -> None:
        self.m = machine
        self.interval = interval
        self._lock = threading.Lock()
        self._armed = False
        self._wake = threading.Event()
        self._quit = False
        self._thread = threading.Thread(target=self._loop, name="apfdbg-gdb-preempt", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        with self._lock:
            self._armed = True
            self._wake.set()

    def disarm(self) -> None:
        with self._lock:
            self._armed = False

    def close(self) -> None:
        with self._lock:
            self._quit = True
            self._armed = False
            self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            if self._quit:
                return
            time.sleep(self.interval)
            with self._lock:
                if self._quit:
                    return
                if self._armed:
                    self.poke()
                else:
                    self._wake.clear()

    def poke(self) -> None:
        m = self.m
        m.pause_requested = True
        # The vCPU in emu_start stops at its next block entry (the C block hook's budget test,
        # as for a watchpoint); every vCPU re-arms its budget before its next emu_start.
        for v in list(m.vcpus):
            st = v.accel.state
            st.irq_window_end = 0
            st.budget_end = 0


class _Session:
    """One gdb connection: the socket, the packet reader and the per-connection protocol state."""

    def __init__(self, conn: socket.socket, peer) -> None:
        self.conn = conn
        self.peer = peer
        self.reader = PacketReader()
        self.no_ack = False
        self.closed = False
        self.last_packet: bytes | None = None
        self.resends = 0
        self.backlog: list = []          # reader events seen while waiting for Ctrl-C
        self.gdb_features: set[str] = set()
        conn.setblocking(True)
        conn.settimeout(10.0)            # a gdb that stops reading must not hang the machine
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def send_raw(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.conn.sendall(data)
        except OSError as e:
            log.info("gdb connection lost while sending: %s", e)
            self.closed = True

    def send(self, payload: str | bytes) -> None:
        pkt = frame(payload)
        self.last_packet = pkt
        self.resends = 0
        log.debug("-> %r", pkt[:200])
        self.send_raw(pkt)

    def receive(self, timeout: float) -> list:
        """Reader events from what arrives within `timeout` (0: only what is there now)."""
        if self.backlog:
            out, self.backlog = self.backlog, []
            return out
        return self.read(timeout)

    def read(self, timeout: float) -> list:
        """Reader events from the socket only (the backlog left alone)."""
        if self.closed:
            return []
        try:
            ready, _, _ = select.select([self.conn], [], [], timeout)
        except (OSError, ValueError):
            self.closed = True
            return []
        if not ready:
            return []
        try:
            data = self.conn.recv(65536)
        except (OSError, socket.timeout) as e:
            log.info("gdb connection lost: %s", e)
            self.closed = True
            return []
        if not data:
            self.closed = True
            return []
        return self.reader.feed(data)

    def close(self) -> None:
        self.closed = True
        try:
            self.conn.close()
        except OSError:
            pass


class GdbServer:
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

    # ==== life cycle =============================================================================
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

    # ==== sharing the engine with the TUI ==========================================================
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

    # ==== the machine ==============================================================================
    def _exited(self) -> bool:
        return self.machine.exit_requested

    def _current_vcpu(self) -> int:
        turn = getattr(self.machine, "_turn", None)
        if turn is not None:
            return turn[0].index
        return self.stop_thread

    def _finish(self) -> None:
        m = self.machine
        if not self.finished:
            self.finished = True
            m.finish()
            ex = getattr(self.engine, "_exited", None)
            if callable(ex):
                ex()
            self._stopped(getattr(self.engine, "stop_reason", "")
                          or f"the run ended: status {m.exit_status} ({m.exit_reason})")

    def _run_slice(self) -> None:
        """Run every vCPU for about `slice_seconds` of wall time (one Machine.step call, cut short
        by the preempter), then report a stop if there was one."""
        m = self.machine
        if self._exited():
            self._on_stopped_by_exit()
            return
        limit = m.config.max_insns
        m.debug_stop = None
        self._count_ready.clear()  # a plain emu_start drops Unicorn's instruction-count hook
        self._preempter.arm()
        try:
            m.pause_requested = False
            m.step(until=limit)
        except Exception as e:
            self._preempter.disarm()
            self._machine_failed(e)
            return
        finally:
            self._preempter.disarm()
        m.pause_requested = False
        if limit is not None and m.now >= limit and not m.exit_requested:
            m.request_exit(EXIT_LIMIT, f"instruction limit {limit} reached")
        if m.exit_requested:
            self._on_stopped_by_exit()
        elif m.debug_stop is not None:
            stop = m.debug_stop
            m.debug_stop = None
            if self.mode == "running":
                self._report(self._debug_stop_reply(stop), stop.vcpu, self._debug_stop_text(stop))
            elif self.mode == "free" and self.shared and stop.id is not None:
                # no gdb: gdb's points are gone, so this is one of the TUI's; it stops the run
                # until a gdb attaches and continues it
                self._report(self._debug_stop_reply(stop), stop.vcpu,
                             self._debug_stop_text(stop) + " (attach gdb to go on)")
            # free running otherwise: a leftover stop is ignored, the run goes on

    def _on_stopped_by_exit(self) -> None:
        self._finish()
        if self.mode == "free" and not self.shared:
            self.mode = "stopped"
        elif self.mode in ("running", "free"):
            was = self.mode
            self.mode = "stopped"
            self._say(f"the run ended: status {self.machine.exit_status} ({self.machine.exit_reason})")
            if was == "running":
                self.last_stop = self._exit_reply()
                self._service(force=True)
                if self.sess is not None:
                    self.sess.send(self.last_stop)

    def _machine_failed(self, e: BaseException) -> None:
        text = f"apfdbg: the machine failed: {type(e).__name__}: {e}"
        log.error("%s\n%s", text, traceback.format_exc())
        self.broken = text
        vcpu = self._current_vcpu()
        self._stopped(text)
        if self.shared:
            self.engine.error = text
        if self.mode == "running" and self.sess is not None:
            self.sess.send("O" + (text + "\n").encode().hex())
            self._report(self._stop_reply(SIGABRT, vcpu), vcpu, text)
        else:
            if self.sess is None:
                self._say(text)
                if not self.shared:  # running without gdb nor TUI: nobody can look at it, give up
                    self._stop.set()
            self.mode = "stopped"
            self.stop_thread = vcpu

    def _report(self, reply: str, vcpu: int, why: str = "") -> None:
        self.mode = "stopped"
        self._stopped(why or f"gdb: stopped at {self._where(vcpu)}")
        self.stop_thread = vcpu
        self.g_thread = self.c_thread = None
        self.last_stop = reply
        self._service(force=True)  # the TUI has the stop before gdb does
        if self.sess is not None:
            self.sess.send(reply)

    def _resume(self) -> object:
        if self._exited():
            self._finish()
            self.last_stop = self._exit_reply()
            return self.last_stop
        if self.broken:
            return E_INTERNAL
        self.mode = "running"
        return _RESUMED

    def _run_due(self) -> None:
        tl = self.machine.timeline
        due = tl.next_due()
        if due is not None and due <= tl.now:
            tl.run_due()

    def _step(self, idx: int) -> object:
        """One instruction (or the event due first) of vCPU `idx`, the others frozen.

        A vCPU that can not run now (hlt, halted by the host, stalled on a page) lets virtual time
        pass to the host's next timed event (page-in, timer) until it can; the other vCPUs stay
        frozen meanwhile. One that can never run again (hlt with IF=0, shut down) reports the stop
        at once, having done nothing."""
        m = self.machine
        if self._exited():
            return self._resume()
        if self.broken:
            return E_INTERNAL
        v = m.vcpus[idx]
        if idx not in self._count_ready:
            # Unicorn 2.1.4 installs its count hook (what stops emu_start after one instruction)
            # on the first counted emu_start without dropping blocks translated before: such a
            # block never stops, so the step would run on forever. Translate afresh.
            v.uc.ctl_flush_tb()
            self._count_ready.add(idx)
        m.debug_stop = None
        m.pause_requested = False
        tl = m.timeline
        try:
            retries = 0
            for n in range(1_000_000):
                result = v.step()
                self._run_due()
                if result in ("instruction", "event", "exited") or m.exit_requested:
                    break
                if v.state in (State.STOPPED, State.SHUTDOWN):
                    break
                if result == "blocked" and v.state is State.RUNNING and retries < 3:
                    retries += 1
                    continue  # an exit to the host happened (e.g. an async PF queued): go on
                retries = 0
                due = tl.next_due()
                if due is None:
                    break
                tl.now = max(tl.now, due)
                tl.run_due()
                if n % 256 == 255 and (self._interrupt_waiting() or self._stop.is_set()):
                    m.pause_requested = False
                    self._report(self._stop_reply(SIGINT, idx), idx, f"gdb: Ctrl-C at {self._where(idx)}")
                    return None
        except Exception as e:
            self.mode = "running"
            self._machine_failed(e)
            return None
        m.pause_requested = False
        if m.exit_requested:
            self._finish()
            self.mode = "stopped"
            self.last_stop = self._exit_reply()
            return self.last_stop
        stop = m.debug_stop
        m.debug_stop = None
        if stop is not None:
            self._report(self._debug_stop_reply(stop), idx, self._debug_stop_text(stop))
        else:
            self._report(self._stop_reply(SIGTRAP, idx), idx, f"gdb: stepped to {self._where(idx)}")
        return None  # _report sent it

    def _interrupt_waiting(self) -> bool:
        sess = self.sess
        if sess is None:
            return False
        events = sess.read(0)
        hit = False
        for ev in events:
            if ev is INTERRUPT:
                hit = True
            else:
                sess.backlog.append(ev)
        return hit

    # ==== stop replies ==========================================================================
    @staticmethod
    def _tid(vcpu: int) -> str:
        return f"{vcpu + 1:x}"

    def _stop_reply(self, sig: int, vcpu: int, extra: str = "") -> str:
        return f"T{sig:02x}thread:{self._tid(vcpu)};{extra}"

    def _exit_reply(self) -> str:
        return f"W{self.machine.exit_status & 0xFF:02x}"

    def _debug_stop_text(self, stop) -> str:
        """The TUI's words for a breakpoint or watchpoint stop."""
        where = self._where(stop.vcpu, stop.rip)
        if stop.id is not None and stop.id not in self.point_kinds:  # a monitor or TUI point
            text = self.debugger.describe_stop(stop, self._describe_addr)
            return text if stop.reason == "event" else f"{text} (apfdbg's, not gdb's)"
        if stop.reason == "watchpoint":
            kind = {3: "read ", 4: "access "}.get(self.point_kinds.get(stop.id, 2), "")
            addr = f" {stop.address:#x}" if stop.address is not None else ""
            return f"gdb: {kind}watchpoint{addr} at {where}"
        return f"gdb: {stop.reason} at {where}"

    def _debug_stop_reply(self, stop) -> str:
        extra = ""
        if stop.id is not None and stop.id not in self.point_kinds:
            # not gdb's (a catchpoint, a monitor or TUI point): a plain SIGTRAP, and the reason as
            # console output, which gdb prints before the stop
            if self.sess is not None and self.mode == "running":
                self.sess.send("O" + (f"apfdbg: {self._debug_stop_text(stop)}\n").encode().hex())
        elif stop.reason == "breakpoint":
            ztype = self.point_kinds.get(stop.id, 0)
            feat = "hwbreak" if ztype == 1 else "swbreak"
            if self.sess is not None and f"{feat}+" in self.sess.gdb_features:
                extra = f"{feat}:;"
        elif stop.reason == "watchpoint":
            ztype = self.point_kinds.get(stop.id, 2)
            name = {2: "watch", 3: "rwatch", 4: "awatch"}.get(ztype, "watch")
            addr = stop.address if stop.address is not None else 0
            extra = f"{name}:{addr:x};"
        return self._stop_reply(SIGTRAP, stop.vcpu, extra)

    # ==== packets ===============================================================================
    def _on_event(self, ev) -> None:
        sess = self.sess
        assert sess is not None
        if isinstance(ev, Packet):
            if not sess.no_ack:
                sess.send_raw(b"+")
            log.debug("<- %r", ev.payload[:200])
            if ev.payload[:1] in _CHANGES:
                self._dirty = True   # the TUI shows it at once
            reply = self.dispatch(ev.payload)
            if self._dirty:
                self._service(force=True)  # before the reply: once gdb has it, so has the TUI
            if reply is not None and reply is not _RESUMED and self.sess is sess:
                sess.send(reply)
        elif isinstance(ev, BadPacket):
            log.info("bad packet from gdb (%s)", ev.reason)
            if ev.reason == "checksum":
                if not sess.no_ack:
                    sess.send_raw(b"-")  # gdb sends it again
            else:
                if not sess.no_ack:
                    sess.send_raw(b"+")
                sess.send(E_BADARG)
        elif ev is INTERRUPT:
            if self.mode == "running":
                vcpu = self._current_vcpu()
                self.machine.pause_requested = False
                self._report(self._stop_reply(SIGINT, vcpu), vcpu, f"gdb: Ctrl-C at {self._where(vcpu)}")
        elif ev is NAK:
            if sess.last_packet is not None and sess.resends < 8:
                sess.resends += 1
                sess.send_raw(sess.last_packet)
        elif ev is ACK:
            sess.resends = 0

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

    # ---- helpers --------------------------------------------------------------------------------
    def _valid(self, tid: int) -> bool:
        return 1 <= tid <= len(self.machine.vcpus)

    @staticmethod
    def _parse_tid(text: bytes) -> int | None:
        """A thread id: hex, 0 (any), -1 (all); ``pPID.TID`` (multiprocess syntax) gives TID."""
        if not text:
            return None
        if text.startswith(b"p"):
            _, _, text = text[1:].partition(b".")
            if not text:
                return -1
        if text == b"-1":
            return -1
        return parse_hex_int(text, "thread id")

    @staticmethod
    def _moved(v, old_rip: int) -> None:
        """gdb moved RIP (``jump``, ``set $pc``): the vCPU no longer resumes from the breakpoint it
        stopped at, so it must not skip that breakpoint the next time it gets there."""
        if v.rip != old_rip and getattr(v, "_bp_skip", None) == old_rip:
            v._bp_skip = None

    def _gvcpu(self):
        idx = self.g_thread if self.g_thread is not None else self.stop_thread
        return self.machine.vcpus[idx]

    @staticmethod
    def _addr_len(text: bytes) -> tuple[int, int]:
        a, sep, n = text.partition(b",")
        if not sep:
            raise ProtocolError("expected ADDR,LENGTH")
        addr, length = parse_hex_int(a, "address"), parse_hex_int(n, "length")
        if addr >= 1 << 64 or addr + length > 1 << 64:
            raise ProtocolError("address range beyond 64 bits")
        return addr, length

    def _translate(self, v, va: int) -> int | None:
        """Linear -> guest physical through the vCPU's page tables, as a supervisor access, without
        A/D updates. A frame the host swapped out is still found: its content stays in RAM."""
        gpa, fault = v.accel.try_translate(va, "read", False, False, host=False)
        if fault is not None or gpa is None:
            return None
        return gpa

    def _read_memory(self, v, addr: int, length: int) -> bytes:
        """What is readable from `addr` on (a prefix, as the protocol allows)."""
        out = bytearray()
        ram = self.machine.ram
        while length:
            chunk = min(length, PAGE - (addr & 0xFFF))
            data = v.peek(addr, chunk)
            if data is None:  # not mapped, or swapped out by the host: look past the host
                gpa = self._translate(v, addr)
                if gpa is None or not ram.contains(gpa, chunk):
                    break
                data = ram.read(gpa, chunk)
            out += data
            addr, length = addr + chunk, length - chunk
        return bytes(out)

    def _write_memory(self, v, addr: int, data: bytes) -> str:
        """All or nothing: every page is translated before a byte is written. Writes ignore the
        guest's write protection (as a debugger's do), and every vCPU's translated code and block
        counts are dropped, since the bytes may be code."""
        if not data:
            return "OK"
        ram = self.machine.ram
        pieces = []
        va, rest = addr, data
        while rest:
            chunk = min(len(rest), PAGE - (va & 0xFFF))
            gpa = self._translate(v, va)
            if gpa is None or not ram.contains(gpa, chunk):
                return E_FAULT
            pieces.append((gpa, rest[:chunk]))
            va, rest = va + chunk, rest[chunk:]
        for gpa, piece in pieces:
            ram.write(gpa, piece)
        for cpu in self.machine.vcpus:
            cpu.uc.ctl_flush_tb()
            cpu.accel.flush_cache()
        return "OK"

    # ---- breakpoints and watchpoints ---------------------------------------------------------
    def _point(self, insert: bool, body: bytes) -> str:
        parts = body.split(b";", 1)[0].split(b",")
        if len(parts) != 3:
            raise ProtocolError("expected TYPE,ADDR,KIND")
        ztype = parse_hex_int(parts[0], "type")
        addr = parse_hex_int(parts[1], "address")
        kind = parse_hex_int(parts[2], "kind")
        if ztype not in POINT_KINDS:
            return ""
        if addr >= 1 << 64:
            return E_BADARG
        key = (ztype, addr, kind)
        if not insert:
            pt = self.points.get(key)
            if pt is None:
                return "OK"  # gdb may remove what a detach or a restart already removed
            pt.refs -= 1
            if pt.refs <= 0:
                self.debugger.remove(pt.id)
                self.points.pop(key, None)
                self.point_kinds.pop(pt.id, None)
            return "OK"
        if key in self.points:
            self.points[key].refs += 1
            return "OK"
        if ztype <= 1:
            point = self.debugger.add_breakpoint(addr)
        else:
            if not 1 <= kind <= MAX_WATCH or addr + kind > 1 << 64:
                return E_BADARG
            point = self.debugger.add_watchpoint(addr, kind, {2: "write", 3: "read", 4: "access"}[ztype])
        self.points[key] = _Point(point.id)
        self.point_kinds[point.id] = ztype
        return "OK"

    def _remove_all_points(self) -> None:
        for pt in list(self.points.values()):
            try:
                self.debugger.remove(pt.id)
            except Exception:
                log.error("removing point %d failed\n%s", pt.id, traceback.format_exc())
        self.points.clear()
        self.point_kinds.clear()

    # ---- run control ---------------------------------------------------------------------------
    def _legacy_resume(self, step: bool, with_signal: bool, body: bytes) -> object:
        if with_signal:  # Csig[;addr]: the signal means nothing to a machine, it is dropped
            sig, _, addr = body.partition(b";")
            parse_hex_int(sig, "signal")
        else:
            addr = body
        vcpu = self.c_thread if self.c_thread is not None else self.stop_thread
        if addr:
            v = self.machine.vcpus[vcpu]
            rip = v.rip
            v.set_reg(UC_X86_REG_RIP, parse_hex_int(addr, "address"))
            self._moved(v, rip)
        if step:
            return self._step(vcpu)
        return self._resume()

    def _v_packet(self, p: bytes) -> object:
        if p == b"vCont?":
            return "vCont;c;C;s;S"
        if p.startswith(b"vCont;"):
            return self._vcont(p[6:])
        if p.startswith(b"vKill"):
            self.sess.send("OK")
            self._kill()
            return None
        if p == b"vMustReplyEmpty":
            return ""
        return ""

    def _vcont(self, text: bytes) -> object:
        """Step: the first ``s``/``S`` action names the vCPU that steps; every other vCPU stays
        frozen, whatever the other actions say (scheduler-locking step). Otherwise continue:
        every vCPU runs (a continue of one thread alone is run as a continue of all)."""
        step_vcpu: int | None = None
        cont = False
        for action in text.split(b";"):
            if not action:
                raise ProtocolError("empty vCont action")
            act, _, tid_text = action.partition(b":")
            if not act:
                raise ProtocolError(f"vCont action {action[:20]!r} without a command")
            kind = chr(act[0])
            if kind in "CS":
                parse_hex_int(act[1:], "signal")
            elif len(act) != 1 or kind not in "cs":
                raise ProtocolError(f"vCont action {action[:20]!r} is not supported")
            tid = self._parse_tid(tid_text) if tid_text else -1
            if tid not in (-1, 0) and not self._valid(tid):
                return E_NOTHREAD
            if kind in "sS":
                if step_vcpu is None:
                    if tid in (-1, 0):
                        step_vcpu = self.c_thread if self.c_thread is not None else self.stop_thread
                    else:
                        step_vcpu = tid - 1
            else:
                cont = True
        if step_vcpu is not None:
            return self._step(step_vcpu)
        if cont:
            return self._resume()
        return E_BADARG

    def _kill(self) -> None:
        m = self.machine
        if not m.exit_requested:
            m.request_exit(EXIT_KILLED, "killed from gdb")
            self.killed = True
        self._finish()
        if self.sess is not None:
            self.sess.closed = True
        self._say("gdb killed the run")
        return None

    # ---- queries -------------------------------------------------------------------------------
    def _query(self, p: bytes) -> object:
        name, sep, args = p.partition(b":")
        if name == b"qSupported":
            feats = set(a.decode("latin-1") for a in args.split(b";") if a) if sep else set()
            self.sess.gdb_features = feats
            reply = [f"PacketSize={PACKET_SIZE:x}", "qXfer:features:read+", "vContSupported+",
                     "QStartNoAckMode+"]
            if "swbreak+" in feats:
                reply.append("swbreak+")
            if "hwbreak+" in feats:
                reply.append("hwbreak+")
            return ";".join(reply)
        if p.startswith(b"qXfer:features:read:"):
            return self._xfer(p[len(b"qXfer:features:read:"):])
        if p == b"qC":
            return f"QC{self._tid(self.stop_thread)}"
        if p == b"qfThreadInfo":
            return "m" + ",".join(self._tid(i) for i in range(len(self.machine.vcpus)))
        if p == b"qsThreadInfo":
            return "l"
        if p.startswith(b"qAttached"):
            return "1"
        if p.startswith(b"qThreadExtraInfo,"):
            tid = self._parse_tid(p[len(b"qThreadExtraInfo,"):])
            if tid is None or not self._valid(tid):
                return E_NOTHREAD
            return self._thread_info(tid - 1).encode().hex()
        if p.startswith(b"qRcmd,"):
            return self._monitor(hexdecode(p[6:]).decode("utf-8", "replace"))
        if p == b"qSymbol::":
            return "OK"
        if p == b"qTStatus":
            return ""
        return ""

    def _xfer(self, rest: bytes) -> str:
        annex, sep, span = rest.partition(b":")
        if not sep:
            raise ProtocolError("qXfer without offset,length")
        if annex != b"target.xml":
            return "E00"
        off, length = self._addr_len(span)
        data = tdesc.TARGET_XML
        chunk = data[off:off + min(length, PACKET_SIZE - 16)]
        more = off + len(chunk) < len(data)
        return ("m" if more else "l").encode() + chunk  # type: ignore[return-value]

    def _thread_info(self, idx: int) -> str:
        v = self.machine.vcpus[idx]
        where = ""
        image = getattr(self.machine, "image", None)
        if image is not None and hasattr(image, "describe"):
            try:
                where = " in " + image.describe(v.rip)
            except Exception:
                where = ""
        return f"vCPU {idx} {v.state.value}{where}"

    MONITOR_HELP = ("monitor commands:\n"
                    "  vcpus        state, RIP, CPL and instructions retired of every vCPU\n"
                    "  time         virtual time (instructions) and the run's state\n"
                    "  console [N]  the last N (default 20) console lines of every vCPU\n"
                    "  catch apf [not-present|ready] [token=T] [gfn=G] | catch msr [INDEX] | catch gp\n"
                    "               | catch pf | catch halt | catch triple-fault | catch event KIND [f=v]\n"
                    "               stop (SIGTRAP) when the host or the machine reports that event\n"
                    "  break LOCATION [vcpu N] [if COND]   apfdbg's breakpoints (file:line, conditions\n"
                    "               over registers and memory); watch|rwatch|awatch ADDR [SIZE] [vcpu N]\n"
                    "  points       apfdbg's breakpoints, watchpoints and catchpoints, with hits\n"
                    "  delete N     delete apfdbg point N (gdb's own: gdb's delete)\n"
                    "  (the syntax of docs/debugging.md; these stay when gdb detaches)\n")

    def _monitor(self, cmd: str) -> str:
        m = self.machine
        words = cmd.split()
        if not words or words[0] == "help":
            text = self.MONITOR_HELP
        elif words[0] == "vcpus":
            text = "".join(f"vCPU {v.index} (thread {self._tid(v.index)}): {v.state.value}, rip {v.rip:#x}, "
                           f"cpl {v.cpl()}, {v.retired:,} instructions\n" for v in m.vcpus)
        elif words[0] == "time":
            state = (f"ended: status {m.exit_status} ({m.exit_reason})" if m.exit_requested else "stopped")
            text = f"virtual time {m.now:,}; {state}\n"
        elif words[0] == "console":
            n = int(words[1]) if len(words) > 1 and words[1].isdigit() else 20
            lines = []
            for v in m.vcpus:
                tail = bytes(v.console[-16384:]).decode("utf-8", "replace").splitlines()[-n:]
                lines += [f"[vcpu{v.index}] {line}\n" for line in tail]
            text = "".join(lines) or "(no console output yet)\n"
        elif words[0] in ("catch", "break", "watch", "rwatch", "awatch"):
            from ..debug.points import PointError, parse_point, set_point
            try:
                spec = parse_point(cmd.strip(), m.image, len(m.vcpus))
                text = set_point(self.debugger, spec, m.image) + "\n"
                self._dirty = True
            except PointError as e:
                text = f"not set: {e}\n"
        elif words[0] == "points":
            from ..debug.points import describe_points
            mine = set(self.point_kinds)
            rows = [r for r in describe_points(self.debugger, m.image) if int(r.split()[0]) not in mine]
            text = "".join(r + "\n" for r in rows) or "no apfdbg points (gdb's: info breakpoints)\n"
        elif words[0] == "delete" and len(words) == 2 and words[1].isdigit():
            pid = int(words[1])
            if pid in self.point_kinds:
                text = f"point {pid} is gdb's: delete it with gdb's delete\n"
            else:
                text = f"deleted point {pid}\n" if self.debugger.remove(pid) else f"no point {pid}\n"
                self._dirty = True
        else:
            text = f"unknown monitor command {words[0]!r}\n" + self.MONITOR_HELP
        return text.encode().hex()


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
          slice_seconds: float = 0.02, announce: Callable[[str], None] | None = None):
    """Serve the GDB remote protocol for `target` (an Engine or a Machine) on host:port.

    Blocking (default): returns when the run has ended and gdb has gone, with the run's exit status
    (EXIT_KILLED after gdb's ``kill``). ``background=True``: returns the started
    :class:`GdbServer` at once (its ``address`` has the port when `port` is 0); the machine then
    belongs to the server's thread until the server ends.

    `announce` gets one-line status messages (listening, connected, detached, exited); the default
    prints them to stderr with an ``apfdbg:`` prefix.
    """
    if announce is None:
        def announce(text: str) -> None:
            print(f"apfdbg: {text}", file=sys.stderr, flush=True)
    server = GdbServer(target, host, port, slice_seconds=slice_seconds, announce=announce)
    h, p = server.address
    if not server.shared:  # shared with the TUI: the serving thread says it, in the status bar too
        announce(f"gdb stub listening on {h}:{p} (in gdb: target remote {h}:{p})")
    if background:
        server.start()
        return server
    try:
        return server.serve_forever()
    except KeyboardInterrupt:
        return None
