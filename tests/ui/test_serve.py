"""`apfdbg serve`: the TUI in a browser through textual-serve, driven by headless Chromium over the
DevTools protocol.  The page's WebSocket is wrapped before any script runs, so the test reads what
the server sent to the terminal (xterm.js draws on a canvas: nothing to read in the DOM)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from .conftest import ROOT, chromium

CHROMIUM = chromium()
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"),
    pytest.mark.skipif(pytest.importorskip("aiohttp") is None, reason="aiohttp (comes with textual-serve)"),
]

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--remote-debugging-port=0",
                  "--window-size=1700,1100", "about:blank"]

# Collects everything the server sends over the page's WebSockets as text (escape sequences and all).
HOOK = r"""
(() => {
  window.__apf = [];
  const dec = new TextDecoder("utf-8", {fatal: false});
  const Native = window.WebSocket;
  window.WebSocket = function (url, protocols) {
    const ws = protocols === undefined ? new Native(url) : new Native(url, protocols);
    ws.addEventListener("message", (ev) => {
      const d = ev.data;
      if (typeof d === "string") { window.__apf.push(d); }
      else if (d instanceof ArrayBuffer) { window.__apf.push(dec.decode(new Uint8Array(d))); }
      else if (d && d.arrayBuffer) { d.arrayBuffer().then((b) => window.__apf.push(dec.decode(new Uint8Array(b)))); }
    });
    return ws;
  };
  window.WebSocket.prototype = Native.prototype;
  Object.assign(window.WebSocket, Native);
})();
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[P^_].*?\x1b\\")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cdp:
    """The smallest DevTools-protocol client: one page, request/response by id."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.n = 0

    async def call(self, method: str, **params):
        self.n += 1
        my = self.n
        await self.ws.send_str(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expr: str):
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return r.get("result", {}).get("value")


async def _drive(port: int, browser_ws_port: int) -> dict:
    import aiohttp
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{browser_ws_port}/json/new?about:blank") as r:
            target = await r.json(content_type=None)
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = Cdp(ws)
            await cdp.call("Page.enable")
            await cdp.call("Page.addScriptToEvaluateOnNewDocument", source=HOOK)
            await cdp.call("Page.navigate", url=f"http://127.0.0.1:{port}/")

            async def screen_text(since: int = 0) -> str:
                chunks = await cdp.js("window.__apf ? window.__apf.slice(%d).join('') : ''" % since) or ""
                return ANSI.sub("", chunks)

            async def wait_for(words, since: int = 0, timeout: float = 60.0) -> str:
                t0 = time.monotonic()
                text = ""
                while time.monotonic() - t0 < timeout:
                    text = await screen_text(since)
                    if all(w in text for w in words):
                        return text
                    await asyncio.sleep(0.25)
                raise AssertionError(f"never saw {words!r}; last {len(text)} chars: {text[-600:]!r}")

            out = {}
            out["first"] = await wait_for(["vCPUs", "Async-PF gfn hash", "Event timeline", "Host memory map",
                                           "Explain", "apfdemo.elf"])
            n = await cdp.js("window.__apf.length")
            # a key press: focus xterm's input and type "?" (the help screen)
            await cdp.js("document.querySelector('.xterm-helper-textarea').focus()")
            await cdp.call("Input.insertText", text="?")
            out["after_key"] = await wait_for(["apfdbg keys"], since=n, timeout=30)
            return out


def test_serve_in_headless_chromium(tmp_path):
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen([sys.executable, "-m", "apfdbg", "serve", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    profile = tempfile.mkdtemp(prefix="apfdbg-chromium-", dir=tmp_path)
    browser = None
    try:
        t0 = time.monotonic()
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode(errors="replace")
                assert time.monotonic() - t0 < 30, "apfdbg serve did not start listening"
                time.sleep(0.2)
        browser = subprocess.Popen([CHROMIUM, f"--user-data-dir={profile}", *CHROMIUM_FLAGS],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        devtools_port = None
        t0 = time.monotonic()
        while devtools_port is None:
            line = browser.stderr.readline().decode(errors="replace")
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                devtools_port = int(m.group(1))
            assert line or browser.poll() is None, "chromium exited"
            assert time.monotonic() - t0 < 30, "chromium did not open its DevTools port"
        out = asyncio.run(asyncio.wait_for(_drive(port, devtools_port), timeout=150))
        assert "MSR accesses" in out["first"] and "Works: done / in flight" in out["first"]
        assert "apfdbg keys" in out["after_key"]
    finally:
        for p in (browser, server):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)
