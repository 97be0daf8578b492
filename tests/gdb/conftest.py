"""Fixtures of the gdb stub tests: a stub over a real machine on an ephemeral loopback port."""
import pytest

from apfdbg.gdbstub.server import GdbServer

from .rsp import Rsp


@pytest.fixture
def served():
    """served(target) -> (server, client): a stub on an ephemeral loopback port, on its thread."""
    made = []

    def start(target, **kw):
        srv = GdbServer(target, "127.0.0.1", 0, announce=lambda text: None, **kw)
        srv.start()
        c = Rsp(srv.address)
        made.append((srv, c))
        return srv, c

    yield start
    for srv, c in made:
        c.close()
        srv.stop()
        srv.close()
