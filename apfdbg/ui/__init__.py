"""The Textual TUI of apfdbg (docs/ui.md)."""
from __future__ import annotations


def run_tui(engine, **kw) -> int:
    from .app import ApfApp
    app = ApfApp(engine, **kw)
    app.run()
    return app.return_code or 0
