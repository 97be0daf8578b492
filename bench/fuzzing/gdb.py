"""The gdb stub: random and mutated RSP packets, bad checksums, huge lengths, binary junk, Ctrl-C,
and clients that hang up in the middle of a packet, one connection per input.

Every connection first asks `?` and must get its stop reply within the bound: the stub keeps serving
the next client, whatever the last one did. The stub never lets an exception out of its thread, so a
Python traceback is what it logs: an error record, or a packet answered "bad packet" because of an
exception that is not the protocol's own (ProtocolError), i.e. a bug behind a polite E16.
"""
from __future__ import annotations

import logging
import random
import socket
import threading
import time

from .common import GUESTS, Report, input_rng, interesting, mutate_bytes

NAME = "gdb"
DEFAULTS = {"insns": 2_000_000}
DESCRIBE = "RSP packets: valid, mutated, bad checksums, huge, junk, hang-ups; 3 stubs, cap {insns:,} insns"
BOUND = 15.0
SERVER_EVERY = 250  # a fresh stub and machine every N inputs (the same inputs meet the same stub)


# ---- what the stub logs ----------------------------------------------------------------------------
class _Records(logging.Handler):
    """Every record of the stub's logger: errors are tracebacks (the stub logs what it caught)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        from apfdbg.gdbstub.protocol import ProtocolError
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR or (exc is not None and not isinstance(exc, ProtocolError)):
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(__import__("traceback").format_exception(*record.exc_info))
            self.bad.append(text)


def _thread_deaths(bad: list[str]):
    def hook(args: threading.ExceptHookArgs) -> None:
        import traceback
        bad.append(f"thread {args.thread.name if args.thread else '?'} died:\n"
                   + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))
    return hook


# ---- the stubs ----------------------------------------------------------------------------------------
def make_server(kind: int, cap: int):
    """Stub `kind` % 3: over a bare Machine (hello, 2 vCPUs), over an Engine (the reference kernel
    under pressure), over an Engine shared with a TUI (the demo guest, as `apfdbg IMAGE --gdb`)."""
    from apfdbg.engine import Engine
    from apfdbg.gdbstub.server import GdbServer
    from apfdbg.machine.config import MachineConfig
    from apfdbg.machine.image import load_image
    from apfdbg.machine.machine import Machine
    from apfdbg.scenario import load_scenario
    k = kind % 3
    if k == 0:
        target = Machine(load_image(GUESTS / "machine" / "hello.elf"), MachineConfig(vcpus=2, max_insns=cap))
    else:
        path, img = ((GUESTS.parent / "tests" / "gdb" / "apf_small.toml", GUESTS / "refkernel" / "refkernel.elf")
                     if k == 1 else (GUESTS.parent / "apfdbg" / "scenarios" / "default.toml",
                                     GUESTS / "apfdemo" / "apfdemo.elf"))
        sc = load_scenario(path)
        sc = sc.model_copy(update={"machine": MachineConfig(**{**sc.machine.model_dump(), "max_insns": cap})})
        target = Engine(load_image(img), sc)
        if k == 2:
            target.drive_externally()
    srv = GdbServer(target, "127.0.0.1", 0, announce=lambda text: None)
    srv.start()
    return srv


def _close(srv) -> None:
    srv.stop()
    srv.close()
    m = srv.machine
    if srv._thread is None or not srv._thread.is_alive():
        m.close()


# ---- packets -----------------------------------------------------------------------------------------
MONITOR = ("vcpus", "time", "console 3", "console", "points", "help", "delete 1", "delete 99", "catch apf ready",
           "catch msr", "catch gp", "catch halt", "catch triple-fault", "catch event inject vector=14",
           "break pf_handler", "break *0xffffffffffffffff", "watch 0x1000 8", "awatch 0xffffffffffffffff 8",
           "rwatch apf_reason_area 100000000", "break main.c:1 if rax == 1", "catch", "bogus", "", "break",
           "watch", "catch apf ready token=zz", "\u00e9\x00")


def _addr(rng: random.Random) -> int:
    return rng.choice((0, 0x1000, 0x100000, 0x400000, 0xFFF000, 0xFFFFFF, 0x1000000, 0x50000, 0x11000 - 8)) \
        if rng.random() < 0.6 else interesting(rng)


def _len(rng: random.Random) -> int:
    return rng.choice((0, 1, 4, 8, 16, 0x100, 0x1FF0, 0x1FF1, 0x4000, 0x10000)) if rng.random() < 0.7 \
        else interesting(rng, rng.choice((16, 32, 64)))


def gen_payload(rng: random.Random) -> bytes:
    from apfdbg.gdbstub import target as tdesc
    nregs = len(tdesc.REGISTERS)
    r = rng.randrange(24)
    tid = rng.choice(("1", "2", "0", "-1", "5", "p1.1", "p1.-1", "p1", "ffffffffffffffff", "zz", ""))
    if r == 0:
        return b"g"
    if r == 1:
        n = rng.choice((tdesc.G_SIZE, tdesc.G_SIZE - 1, tdesc.G_SIZE + 1, 0, 3))
        return b"G" + rng.randbytes(n).hex().encode()[:2 * n + rng.choice((0, 0, -1))]
    if r == 2:
        return f"p{rng.randrange(nregs + 4):x}".encode()
    if r == 3:
        n = rng.randrange(nregs + 2)
        size = tdesc.REGISTERS[n].size if n < nregs and rng.random() < 0.8 else rng.choice((0, 1, 8, 10, 64))
        return f"P{n:x}=".encode() + rng.randbytes(size).hex().encode()
    if r == 4:
        return f"m{_addr(rng):x},{_len(rng):x}".encode()
    if r == 5:
        n = min(_len(rng), 0x2000)
        return f"M{_addr(rng):x},{n:x}:".encode() + rng.randbytes(n).hex().encode()
    if r == 6:
        n = min(_len(rng), 0x2000)
        from apfdbg.gdbstub.protocol import escape
        return f"X{_addr(rng):x},{n:x}:".encode() + escape(rng.randbytes(n))
    if r == 7:
        return f"{rng.choice('Zz')}{rng.randrange(6)},{_addr(rng):x},{_len(rng):x}".encode()
    if r == 8:
        return f"H{rng.choice('gcx')}{tid}".encode()
    if r == 9:
        return f"T{tid}".encode()
    if r == 10:
        return rng.choice((b"c", b"s", b"C05", b"S05", f"c{_addr(rng):x}".encode(), b"C", b"Szz", b"s;1"))
    if r == 11:
        acts = ";".join(rng.choice(("c", "s", "C05", "S05", "x", "", "c:", "s:1", "s:2", "c:-1", "s:9", "C:1"))
                        + (f":{tid}" if rng.random() < 0.5 else "") for _ in range(rng.randint(1, 3)))
        return b"vCont;" + acts.encode()
    if r == 12:
        return rng.choice((b"vCont?", b"vMustReplyEmpty", b"vKill;1", b"vFile:open:", b"vRun"))
    if r == 13:
        return b"qRcmd," + rng.choice(MONITOR).encode().hex().encode()
    if r == 14:
        return f"qXfer:features:read:{rng.choice(('target.xml', 'x.xml', ''))}:{_len(rng):x},{_len(rng):x}".encode()
    if r == 15:
        return rng.choice((b"qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+", b"qSupported",
                           b"qC", b"qfThreadInfo", b"qsThreadInfo", b"qAttached", b"qSymbol::", b"qTStatus",
                           b"qThreadExtraInfo," + tid.encode(), b"qOffsets", b"QStartNoAckMode", b"QNonStop:1"))
    if r == 16:
        return b"?"
    if r == 17:
        return rng.choice((b"D", b"D;1", b"k")) if rng.random() < 0.3 else b"?"
    if r == 18:
        return rng.randbytes(rng.randint(0, 64))
    if r == 19:  # a huge one: past the reader's limit, or just under it
        return rng.choice((b"m", b"G", b"X0,1:", b"qRcmd,")) + b"0" * rng.choice((0x3FF0, 0x4000, 0x4400, 0x10000))
    if r == 20:
        return f"m{interesting(rng):x}{'0' * rng.randint(0, 40)},{interesting(rng):x}".encode()
    if r == 21:
        return rng.choice((b"m", b"M", b"X", b"Z", b"z", b"p", b"P", b"H", b"T", b"q", b"Q", b"v", b"vCont;"))
    # a real one, mutated
    base = bytearray(gen_payload(rng))
    mutate_bytes(rng, base, rng.randint(1, 4))
    return bytes(base)


def gen_input(rng: random.Random) -> tuple[list[bytes], str, str]:
    """(pieces to send, how to hang up, words)."""
    from apfdbg.gdbstub.protocol import checksum, frame
    pieces, words = [], []
    for _ in range(rng.randint(1, 8)):
        r = rng.random()
        if r < 0.75:
            p = gen_payload(rng)
            pkt = frame(p)
            if rng.random() < 0.05:  # bad checksum
                pkt = pkt[:-2] + b"%02x" % ((checksum(pkt[1:-3]) + 1) & 0xFF)
                words.append(f"badsum {p[:24]!r}")
            else:
                words.append(repr(p[:32]))
            pieces.append(pkt)
        elif r < 0.85:
            b = bytes(rng.choice(b"$#}*+-\x03ab0") for _ in range(rng.randint(1, 16)))
            pieces.append(b)
            words.append(f"junk {b!r}")
        elif r < 0.92:
            pieces.append(b"\x03")
            words.append("ctrl-c")
        else:
            pieces.append(b"+" if rng.random() < 0.5 else b"-")
            words.append("ack/nak")
    hangup = rng.choice(("eof", "eof", "eof", "mid-packet", "reset"))
    if hangup == "mid-packet":
        pkt = frame(gen_payload(rng))
        pieces.append(pkt[:rng.randrange(1, len(pkt))])
        words.append("hang up mid-packet")
    elif hangup == "reset":
        words.append("reset")
    return pieces, hangup, "; ".join(words)[:300]


# ---- a client ------------------------------------------------------------------------------------
def _probe(srv, deadline: float) -> socket.socket | None:
    """A connection whose `?` got a stop reply (a second gdb may be refused while the stub ends the
    last one's session: try again until the deadline); None if the stub has ended (a stub without a
    TUI ends when the run has ended and no gdb is attached). Raises TimeoutError."""
    from apfdbg.gdbstub.protocol import Packet, PacketReader
    address = srv.address
    while True:
        if not srv._thread.is_alive():
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the stub did not answer '?' on a new connection")
        try:
            s = socket.create_connection(address, timeout=left)
        except OSError:
            time.sleep(0.01)
            continue
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = PacketReader(max_payload=1 << 20)
        try:
            s.sendall(b"$?#3f")
            while time.monotonic() < deadline:
                s.settimeout(max(0.001, deadline - time.monotonic()))
                data = s.recv(65536)
                if not data:
                    break  # refused (one gdb at a time): again
                if any(isinstance(e, Packet) for e in reader.feed(data)):
                    s.sendall(b"+")
                    return s
        except socket.timeout:
            s.close()
            raise TimeoutError("the stub did not answer '?'") from None
        except OSError:
            pass
        s.close()
        time.sleep(0.01)


def _send_and_hang_up(s: socket.socket, pieces: list[bytes], hangup: str, deadline: float) -> None:
    """Send, hang up, read what comes until the stub closes its end (it has served the input)."""
    import struct
    try:
        for p in pieces:
            s.sendall(p)
        if hangup == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            return
        s.shutdown(socket.SHUT_WR)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the stub did not end the session after the client hung up")
            s.settimeout(left)
            if not s.recv(1 << 16):
                return
    except socket.timeout:
        raise TimeoutError("the stub did not end the session after the client hung up") from None
    except (ConnectionResetError, BrokenPipeError):
        return  # the stub hung up first (kill, detach, a session it gave up)
    finally:
        s.close()


def run(report: Report, seed: int, start: int, stop: int, opts: dict) -> None:
    records = _Records()
    logger = logging.getLogger("apfdbg.gdbstub")
    old_level, old_prop, old_hook = logger.level, logger.propagate, threading.excepthook
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    threading.excepthook = _thread_deaths(records.bad)
    srv, srv_index, last = None, None, None
    try:
        for i in range(start, stop):
            rng = input_rng(seed, NAME, i)
            pieces, hangup, what = gen_input(rng)
            report.begin(i, 3 * BOUND)
            want = i // SERVER_EVERY
            if srv is not None and (srv_index != want or not srv._thread.is_alive()):
                if srv_index == want:
                    report.note("stub ended (kill, or the run ended with no gdb): a new one")
                _close(srv)
                srv = None
            if srv is None:
                srv, srv_index, last = make_server(want, opts["insns"]), want, None
            try:
                s = _probe(srv, time.monotonic() + BOUND)
                if s is None:
                    report.note("stub ended (kill, or the run ended with no gdb): a new one")
                    _close(srv)
                    srv, last = make_server(want, opts["insns"]), None
                    s = _probe(srv, time.monotonic() + BOUND)
                if s is None:
                    raise TimeoutError("a new stub ended at once")
            except TimeoutError as e:
                report.fail("hang", last if last is not None else i, f"after {what}" if last is None else "the input before", str(e))
                _close(srv)
                srv = None
                continue
            try:
                _send_and_hang_up(s, pieces, hangup, time.monotonic() + BOUND)
            except TimeoutError as e:
                report.fail("hang", i, what, str(e))
                _close(srv)
                srv = None
            except OSError as e:
                report.note(f"client: {type(e).__name__}")
            last = i
            time.sleep(0)
            if records.bad:
                report.fail("traceback", i, what, "\n".join(records.bad)[:8000], len(records.bad))
                records.bad.clear()
            else:
                report.note("served")
    finally:
        if srv is not None:
            _close(srv)
        logger.removeHandler(records)
        logger.setLevel(old_level)
        logger.propagate = old_prop
        threading.excepthook = old_hook
