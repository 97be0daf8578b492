"""Packet framing against hand-made bytes: checksums, escapes, acks, Ctrl-C, damaged input."""
import random

import pytest

from apfdbg.gdbstub.protocol import (ACK, INTERRUPT, NAK, BadPacket, Packet, PacketReader, ProtocolError,
                                     checksum, escape, frame, hexdecode, parse_hex_int, unescape)


def test_checksum_is_the_byte_sum_modulo_256():
    assert checksum(b"") == 0
    assert checksum(b"OK") == 0x9A
    assert checksum(b"g") == 0x67
    assert checksum(bytes([0xFF, 0x02])) == 0x01


def test_frame_of_known_packets():
    assert frame("OK") == b"$OK#9a"
    assert frame("") == b"$#00"
    assert frame(b"qSupported") == b"$qSupported#37"


def test_escape_the_four_reserved_bytes():
    assert escape(b"}") == b"}]"
    assert escape(b"#") == b"}\x03"
    assert escape(b"$") == b"}\x04"
    assert escape(b"*") == b"}\x0a"
    assert escape(b"a}b#c$d*e") == b"a}]b}\x03c}\x04d}\x0ae"
    assert escape(b"plain") == b"plain"


def test_unescape_undoes_escape_for_every_byte():
    data = bytes(range(256)) * 2
    assert unescape(escape(data)) == data
    with pytest.raises(ProtocolError):
        unescape(b"abc}")


def test_frame_escapes_and_checksums_the_escaped_bytes():
    pkt = frame(b"x*y")
    assert pkt == b"$x}\x0ay#" + b"%02x" % checksum(b"x}\x0ay")
    # a reply can never be read as run-length encoded: no bare '*' after the '$'
    assert b"*" not in frame(bytes(range(256)))
    assert frame(b"#$").count(b"#") == 1 + 0  # only the terminator '#' is bare


def test_reader_splits_packets_acks_and_interrupts():
    r = PacketReader()
    evs = r.feed(b"+$g#67-\x03$m100,4#%02x+" % checksum(b"m100,4"))
    assert evs == [ACK, Packet(b"g"), NAK, INTERRUPT, Packet(b"m100,4"), ACK]


def test_reader_reassembles_across_feeds_byte_by_byte():
    r = PacketReader()
    raw = b"X1000,2:}]}\x03"  # already escaped, as gdb sends an X packet
    stream = frame(b"vCont;s:2") + b"$" + raw + b"#%02x" % checksum(raw)
    out = []
    for b in stream:
        out += r.feed(bytes([b]))
    assert out == [Packet(b"vCont;s:2"), Packet(b"X1000,2:}]}\x03")]
    assert unescape(out[1].payload.split(b":", 1)[1]) == b"}#"


def test_reader_rejects_a_bad_checksum_and_recovers():
    r = PacketReader()
    assert r.feed(b"$g#00") == [BadPacket("checksum")]
    assert r.feed(b"$g#zz") == [BadPacket("checksum")]
    assert r.feed(b"$g# 7") == [BadPacket("checksum")]   # int() would accept " 7": not hex
    assert r.feed(b"$g#67") == [Packet(b"g")]


def test_reader_drops_garbage_between_packets():
    r = PacketReader()
    assert r.feed(b"hello\x00\xff world$?#3f") == [Packet(b"?")]
    assert r.garbage == len(b"hello\x00\xff world")


def test_reader_restarts_at_a_new_dollar_inside_a_broken_packet():
    r = PacketReader()
    assert r.feed(b"$m0,4$g#67") == [Packet(b"g")]


def test_oversize_payload_is_skipped_with_bounded_memory():
    r = PacketReader(max_payload=64)
    evs = r.feed(b"$" + b"A" * 10_000)
    assert evs == [] and len(r._body) <= 64 + 10_000 and r._body == bytearray()
    evs = r.feed(b"A" * 10_000 + b"#00$g#67")
    assert evs == [BadPacket("oversize"), Packet(b"g")]


def test_interrupt_byte_inside_a_packet_is_data():
    r = PacketReader()
    body = b"X0,1:\x03"
    assert r.feed(b"$" + body + b"#" + b"%02x" % checksum(body)) == [Packet(body)]


def test_hex_helpers_refuse_bad_input():
    assert hexdecode("00ff") == b"\x00\xff"
    for bad in ("0", "zz", "0g", "12 4"):
        with pytest.raises(ProtocolError):
            hexdecode(bad)
    assert parse_hex_int(b"1f") == 31
    for bad in (b"", b"-1", b"0x10", b"1" * 40):
        with pytest.raises(ProtocolError):
            parse_hex_int(bad)


def test_reader_survives_random_bytes():
    rng = random.Random(1)
    r = PacketReader(max_payload=512)
    for _ in range(200):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 400)))
        for ev in r.feed(blob):
            assert isinstance(ev, (Packet, BadPacket)) or ev in (ACK, NAK, INTERRUPT)
    r.feed(b"#00")  # close whatever packet the noise left open
    r.feed(b"00")
    assert r.feed(b"$g#67")[-1] == Packet(b"g")
