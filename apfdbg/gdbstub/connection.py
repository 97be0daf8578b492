"""The connection: one gdb session's socket and packet framing, and the preempter that
interrupts the machine so the socket is looked at between slices."""
from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass

from ..machine.machine import Machine
from .common import log
from .protocol import PacketReader, frame


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

