"""Textual's web driver (the one textual-serve runs apps with), made to end with its connection.

Two gaps of the stock driver, both seen as sessions that outlived their browser tab: when its stdin
closes (the server died or dropped the session) the input thread just returns and the app runs on
with nobody to see it; and it takes SIGINT/SIGTERM for itself, ending with status 0 and skipping
apfdbg's own stop (docs/lifecycle.md)."""
from __future__ import annotations

import signal

from textual import messages
from textual.drivers.web_driver import WebDriver

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ServedDriver(WebDriver):
    def start_application_mode(self) -> None:
        ours = {s: signal.getsignal(s) for s in STOP_SIGNALS}   # apfdbg.lifecycle's handlers, if any
        super().start_application_mode()
        import asyncio
        loop = asyncio.get_running_loop()
        for s, handler in ours.items():
            if callable(handler):
                loop.add_signal_handler(s, handler, s, None)

    def run_input_thread(self) -> None:
        try:
            super().run_input_thread()
        finally:
            if not self.exit_event.is_set():   # input ended, not by the app's own exit: stdin closed
                self._app.post_message(messages.ExitApp())
