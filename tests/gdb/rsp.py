"""A raw GDB-remote client for the stub's tests (what gdb does, packet by packet)."""
from __future__ import annotations

import socket
import time
from pathlib import Path

from apfdbg.engine import Engine
from apfdbg.gdbstub.protocol import PacketReader, Packet, frame
from apfdbg.machine.config import MachineConfig
from apfdbg.machine.image import load_image
from apfdbg.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent.parent
GUESTS = ROOT / "guests"


class Rsp:
    """Just enough of gdb's side: packets with acks, replies, raw bytes."""

    def __init__(self, address, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as gdb does
        self.reader = PacketReader(max_payload=1 << 20)
        self.events: list = []
        self.no_ack = False
        self.output: list[str] = []   # console output (O packets) gdb would print

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _next_event(self, timeout: float):
        deadline = time.monotonic() + timeout
        while not self.events:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from the stub")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the stub closed the connection")
            self.events.extend(self.reader.feed(data))
        return self.events.pop(0)

    def reply(self, timeout: float = 10.0) -> bytes:
        """The next packet's payload (acks skipped; console output `O...` while the target runs is
        kept in `self.output`, as gdb prints it)."""
        while True:
            ev = self._next_event(timeout)
            if isinstance(ev, Packet):
                if not self.no_ack:
                    self.send_raw(b"+")
                p = ev.payload
                if p.startswith(b"O") and len(p) > 1 and p != b"OK" and all(
                        c in b"0123456789abcdef" for c in p[1:]):
                    self.output.append(bytes.fromhex(p[1:].decode()).decode(errors="replace"))
                    continue
                return p

    def next_raw_event(self, timeout: float = 5.0):
        return self._next_event(timeout)

    def cmd(self, payload: bytes | str, timeout: float = 10.0) -> bytes:
        self.send_raw(frame(payload))
        return self.reply(timeout)

    def cmd_raw(self, body: bytes, timeout: float = 10.0) -> bytes:
        """A packet whose body is sent as is (already escaped, as gdb sends X data)."""
        self.send_raw(b"$" + body + b"#%02x" % (sum(body) & 0xFF))
        return self.reply(timeout)

    def send(self, payload: bytes | str) -> None:
        self.send_raw(frame(payload))

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def machine_engine(name: str, vcpus: int = 2, **machine) -> Engine:
    sc = Scenario(machine=MachineConfig(vcpus=vcpus, **machine))
    return Engine(load_image(GUESTS / f"{name}.elf"), sc)
