"""Registers, memory and gdb's own breakpoints and watchpoints (Z/z packets)."""
from __future__ import annotations

import traceback

from .common import E_BADARG, E_FAULT, MAX_WATCH, PAGE, POINT_KINDS, log
from .connection import _Point
from .protocol import ProtocolError, parse_hex_int


class MemoryAndPoints:
    """GdbServer methods (a mixin): what g/G/p/P/m/M/X/Z/z need."""

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

