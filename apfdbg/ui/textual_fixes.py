"""Guards around two Textual 8.2 faults the fuzzer (bench/fuzz.py, target tui) hit, kept in one place
so they go when Textual fixes them:

- OptionList pages by a line map built at layout: `pagedown` in a command palette that has options
  but no layout yet raised KeyError. Paging before the layout now does nothing.
- A key still queued when the app closes was looked up on an empty screen stack
  (ScreenStackError): ApfApp drops such keys (`ApfApp._on_key`).
"""
from __future__ import annotations

from textual.widgets import OptionList

_move_page = OptionList._move_page


def _move_page_after_layout(self: OptionList, direction: int) -> None:
    if (self.highlighted or 0) not in self._index_to_line:
        return
    _move_page(self, direction)


def install() -> None:
    OptionList._move_page = _move_page_after_layout  # type: ignore[method-assign]
