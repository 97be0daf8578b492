"""The TUI and the gdb stub on one engine: gdb drives the run, the TUI shows it.

The stub's thread owns the machine (it runs the TUI's host commands between its slices and
publishes the snapshots); the app only reads snapshots and queues commands, as with the engine's
own thread. Quitting the app stops the stub, which closes gdb's connection.
"""
from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

from ..engine import Engine
from ..ui.app import ApfApp
from .server import GdbServer

_ON_VCPU = re.compile(r"\bon vCPU (\d+)\b")


class GdbApp(ApfApp):
    """ApfApp over an engine a :class:`GdbServer` drives. The server starts with the app (on
    mount) and stops with it (on unmount); its one-line messages become notifications, and a stop
    on a vCPU selects that vCPU, as gdb switches to the thread that stopped."""

    # Textual resolves a relative CSS_PATH next to the subclass's module: point at ApfApp's
    CSS_PATH = Path(sys.modules[ApfApp.__module__].__file__).parent / ApfApp.CSS_PATH

    def __init__(self, engine: Engine, server: GdbServer, **kw) -> None:
        if not engine.external:
            engine.drive_externally()
        if kw.get("speed") is None:
            kw["speed"] = "full"   # the engine's pacing would only cut gdb's slices short
        super().__init__(engine, **kw)
        self.server = server
        self._notes: collections.deque[str] = collections.deque(maxlen=50)
        outer = server.announce
        def announce(text: str) -> None:  # the server's thread: no UI calls here, a deque only
            self._notes.append(text)
            outer(text)
        server.announce = announce
        self._gdb_followed: tuple | None = None
        self._server_gone = False

    # Textual calls on_mount/on_unmount of every class in the MRO: these add to ApfApp's.
    def on_mount(self) -> None:
        if self.server._thread is None:
            self.server.start()

    def on_unmount(self) -> None:
        self.server.stop()

    def poll(self, force: bool = False) -> None:
        while self._notes:
            self.notify(self._notes.popleft(), title="gdb", timeout=4)
        snap = self.engine.latest
        if snap is not self.snap and not snap.running:
            key = (snap.time, snap.stop_reason)
            m = _ON_VCPU.search(snap.stop_reason)
            if key != self._gdb_followed and m and int(m.group(1)) < len(snap.vcpus):
                self._gdb_followed = key
                self.vcpu = int(m.group(1))
        srv = self.server
        if not self._server_gone and srv._thread is not None and not srv._thread.is_alive() \
                and (srv.fatal or not srv._stop.is_set()):
            self._server_gone = True
            self.notify(srv.fatal or "the gdb stub stopped", title="gdb", severity="error",
                        timeout=30)
        super().poll(force)
