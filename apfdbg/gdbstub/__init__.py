"""GDB remote-protocol stub: debug the machine's guests with gdb (docs/gdb.md).

    from apfdbg.gdbstub import serve
    status = serve(engine, "127.0.0.1", 1234)   # blocks until the run ends and gdb has gone
"""
from .server import EXIT_KILLED, GdbServer, parse_listen, serve

__all__ = ["serve", "GdbServer", "EXIT_KILLED", "parse_listen"]
