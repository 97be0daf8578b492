"""`apfdbg serve`: textual-serve's server, with a life cycle for its sessions (docs/lifecycle.md).

Every browser tab gets its own apfdbg process. Here each process ends with its tab: on a closed
tab or a dropped connection the server asks it to quit, then terminates it, then kills it; on the
server's own end, by any signal, the process follows (a parent-death signal, and its stdin closes).
The number of sessions is bounded, and a session with no input for the idle timeout ends."""
from __future__ import annotations

import asyncio
import html
import os
import time

from aiohttp import web
from textual_serve import server as ts_server
from textual_serve.app_service import AppService

from .lifecycle import SERVE_PARENT_ENV

DRIVER = "apfdbg.ui.webdriver:ServedDriver"
QUIT_GRACE = 1.0    # seconds a session has to quit when asked, before SIGTERM
TERM_GRACE = 0.7    # then before SIGKILL


class Session(AppService):
    """One browser tab's apfdbg process."""

    server: "SessionServer"

    def _build_environment(self, width: int = 80, height: int = 24) -> dict[str, str]:
        env = super()._build_environment(width, height)
        env["TEXTUAL_DRIVER"] = DRIVER
        env[SERVE_PARENT_ENV] = str(os.getpid())   # the session dies with the server
        return env

    async def start(self, width: int, height: int) -> None:
        self.last_input = time.monotonic()
        self.server.sessions.add(self)
        await super().start(width, height)
        self._idle_task = asyncio.create_task(self._watch_idle())

    async def send_bytes(self, data: bytes) -> bool:
        self.last_input = time.monotonic()
        return await super().send_bytes(data)

    async def set_terminal_size(self, width: int, height: int) -> None:
        self.last_input = time.monotonic()
        await super().set_terminal_size(width, height)

    async def _watch_idle(self) -> None:
        timeout = self.server.idle_timeout
        if not timeout:
            return
        while True:
            left = self.last_input + timeout - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(left, 30.0))
        await self.stop()
        await self.remote_close()   # the tab shows the session ended

    async def stop(self) -> None:
        """Ask the process to quit; then SIGTERM, then SIGKILL. Returns once it is gone."""
        self.server.sessions.discard(self)
        idle = getattr(self, "_idle_task", None)
        if idle is not None and idle is not asyncio.current_task():
            idle.cancel()
        proc = self._process
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await self._download_manager.cancel_app_downloads(app_service_id=self.app_service_id)
                await self.send_meta({"type": "quit"})
                await asyncio.wait_for(asyncio.shield(task), QUIT_GRACE)
            except (asyncio.TimeoutError, OSError, RuntimeError):
                pass
        if proc is None or proc.returncode is not None:
            return
        for how, grace in ((proc.terminate, TERM_GRACE), (proc.kill, 5.0)):
            try:
                how()
            except ProcessLookupError:
                return
            try:
                await asyncio.wait_for(proc.wait(), grace)
                return
            except asyncio.TimeoutError:
                continue


class SessionServer(ts_server.Server):
    def __init__(self, command: str, *, max_sessions: int, idle_timeout: float, **kw) -> None:
        super().__init__(command, **kw)
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.sessions: set[Session] = set()

    def _full(self) -> bool:
        return len(self.sessions) >= self.max_sessions

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        if self._full():
            return web.Response(status=503, content_type="text/html", text=FULL_PAGE.format(
                n=self.max_sessions, title=html.escape(self.title)))
        return await super().handle_index(request)

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        if self._full():   # a page opened before the last session started
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.close(code=1013, message=b"apfdbg serve: all sessions are in use")
            return ws
        return await super().handle_websocket(request)

    async def on_shutdown(self, app: web.Application) -> None:
        await asyncio.gather(*(s.stop() for s in list(self.sessions)), return_exceptions=True)


FULL_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}: full</title></head>
<body style="font-family: monospace; background: #0f131a; color: #d7dde8; padding: 2em">
<h1>apfdbg serve is full</h1>
<p>All {n} sessions are in use (<code>--max-sessions {n}</code>). Try again when a tab closes:
each session ends with its tab, or after its idle timeout.</p></body></html>
"""


def serve(command: str, *, host: str, port: int, public_url: str | None, max_sessions: int,
          idle_timeout: float) -> None:
    Session.server = server = SessionServer(command, host=host, port=port, title="apfdbg",
                                            public_url=public_url, max_sessions=max_sessions,
                                            idle_timeout=idle_timeout)
    ts_server.AppService = Session   # the server makes one per tab (textual-serve has no hook for it)
    server.serve()
