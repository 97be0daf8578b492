"""GDB Remote Serial Protocol framing (gdb manual, Appendix E "Overview").

Pure functions and an incremental reader, no sockets, so every rule is testable on hand-made bytes:

* a packet is ``$`` payload ``#`` two hex digits, the checksum being the sum of the payload bytes
  modulo 256, computed over the payload *as sent* (escapes included);
* binary data escapes ``}`` ``#`` ``$`` ``*`` as ``}`` followed by the byte XOR 0x20;
* the receiver acknowledges each packet with ``+`` (good) or ``-`` (bad checksum: resend), unless
  both sides agreed on QStartNoAckMode;
* a lone 0x03 byte outside a packet is an interrupt request (Ctrl-C);
* replies are never run-length encoded (``*`` is escaped, so a reply can not be read as RLE).
"""
from __future__ import annotations

from dataclasses import dataclass

#: Largest packet payload we accept, and what qSupported advertises as PacketSize (gdb then sizes
#: its ``m``/``M``/``X``/``G`` requests to fit).
PACKET_SIZE = 0x4000
#: Incoming payloads longer than this are discarded whole (with an error reply) rather than kept.
MAX_INCOMING = PACKET_SIZE + 1024

_ESCAPED = frozenset(b"}#$*")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class ProtocolError(ValueError):
    """A packet's content is malformed (bad hex, missing field): answered with an error reply."""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Escape the bytes the protocol reserves (``}`` ``#`` ``$`` ``*``)."""
    if not any(b in _ESCAPED for b in data):
        return data
    out = bytearray()
    for b in data:
        if b in _ESCAPED:
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo :func:`escape` (binary payloads such as ``X``); a trailing lone ``}`` is an error."""
    if 0x7D not in data:
        return data
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                raise ProtocolError("escape character at the end of binary data")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def frame(payload: bytes | str) -> bytes:
    """A complete packet for `payload` (escaped; the checksum covers the escaped bytes)."""
    if isinstance(payload, str):
        payload = payload.encode("latin-1")
    body = escape(payload)
    return b"$" + body + b"#" + b"%02x" % checksum(body)


def hexdecode(text: bytes | str) -> bytes:
    if isinstance(text, str):
        text = text.encode("latin-1")
    if len(text) % 2 or not all(c in _HEX for c in text):
        raise ProtocolError("bad hex data")
    return bytes.fromhex(text.decode("ascii"))


def hexencode(data: bytes) -> str:
    return data.hex()


def parse_hex_int(text: bytes | str, what: str = "number") -> int:
    if isinstance(text, str):
        text = text.encode("latin-1")
    if not text or len(text) > 32 or not all(c in _HEX for c in text):
        raise ProtocolError(f"bad hex {what}: {text[:40]!r}")
    return int(text, 16)


@dataclass(frozen=True)
class Packet:
    payload: bytes


@dataclass(frozen=True)
class BadPacket:
    """A packet that arrived damaged: `reason` is "checksum" or "oversize"."""
    reason: str


class Interrupt:
    """A 0x03 byte outside a packet."""
    def __repr__(self) -> str:
        return "Interrupt()"


class Ack:
    def __repr__(self) -> str:
        return "Ack()"


class Nak:
    def __repr__(self) -> str:
        return "Nak()"


INTERRUPT, ACK, NAK = Interrupt(), Ack(), Nak()


class PacketReader:
    """Incremental parser: feed it whatever the socket gave, get back what it completed.

    Bytes outside a packet other than ``$``, ``+``, ``-`` and 0x03 are dropped (counted in
    ``garbage``). Memory stays bounded whatever arrives: an oversize payload is skipped up to its
    ``#``, not stored.
    """

    def __init__(self, max_payload: int = MAX_INCOMING) -> None:
        self.max_payload = max_payload
        self.garbage = 0
        self._state = "idle"      # idle, body, sum1, sum2
        self._body = bytearray()
        self._oversize = False
        self._sum = b""

    @property
    def in_packet(self) -> bool:
        return self._state != "idle"

    def feed(self, data: bytes) -> list:
        out: list = []
        i, n = 0, len(data)
        while i < n:
            st = self._state
            if st == "idle":
                b = data[i]
                i += 1
                if b == 0x24:  # $
                    self._state, self._oversize = "body", False
                    self._body.clear()
                elif b == 0x2B:
                    out.append(ACK)
                elif b == 0x2D:
                    out.append(NAK)
                elif b == 0x03:
                    out.append(INTERRUPT)
                else:
                    self.garbage += 1
            elif st == "body":
                j = data.find(b"#", i)
                d = data.find(b"$", i, n if j < 0 else j)
                end = n if j < 0 else j
                if d >= 0:  # a new packet starts before this one ended: drop the broken one
                    self.garbage += d - i + len(self._body) + 1
                    self._body.clear()
                    self._oversize = False
                    i = d + 1
                    continue
                if not self._oversize:
                    self._body += data[i:end]
                    if len(self._body) > self.max_payload:
                        self._oversize = True
                        self._body.clear()
                i = end
                if j >= 0:
                    i = j + 1
                    self._state, self._sum = "sum1", b""
            else:  # the two checksum digits
                self._sum += data[i:i + 1]
                i += 1
                if len(self._sum) == 2:
                    self._state = "idle"
                    if self._oversize:
                        out.append(BadPacket("oversize"))
                    else:
                        body = bytes(self._body)
                        good = all(c in _HEX for c in self._sum) and int(self._sum, 16) == checksum(body)
                        out.append(Packet(body) if good else BadPacket("checksum"))
                    self._body.clear()
        return out
