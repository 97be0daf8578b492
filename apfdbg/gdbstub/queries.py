"""Queries and features (q packets, qXfer target description) and monitor commands (qRcmd)."""
from __future__ import annotations

from . import target as tdesc
from .common import E_NOTHREAD
from .protocol import PACKET_SIZE, ProtocolError, hexdecode


class Queries:
    """GdbServer methods (a mixin) answering gdb's questions."""

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

