"""Packets bench/fuzz.py (gdb target) found answered by an internal error (E05 and a logged
traceback, or, before that, a polite E16 over an exception that was not the protocol's): each is a
malformed packet, so the reply is E16 (EINVAL) and nothing is logged as an error."""
import logging

import pytest

from apfdbg.gdbstub import target as tdesc

from .rsp import machine_engine


def _nreg(name: str) -> str:
    return f"{tdesc.BY_NAME[name]:x}"


@pytest.mark.parametrize("packet", [
    "G7428ce",                                    # ends inside the first register
    "G" + "00" * (tdesc.G_SIZE + 1),              # longer than the register file
    "P" + _nreg("ds") + "=" + "00" * 8,           # ds is 4 bytes
    "P" + _nreg("xmm4") + "=08",                  # xmm4 is 16 bytes
    "vCont;:2;c:-1;c:",                           # an empty vCont action
    "vCont;:1",
], ids=["G-inside-a-register", "G-too-long", "P-ds-8-bytes", "P-xmm4-1-byte", "vCont-empty-action",
        "vCont-empty-action-2"])
def test_malformed_packet_is_einval(served, caplog, packet):
    _srv, c = served(machine_engine("machine/hello"))
    with caplog.at_level(logging.INFO, logger="apfdbg.gdbstub"):
        assert c.cmd(packet) == b"E16"
        assert c.cmd("?").startswith(b"T")        # and the stub goes on serving
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
