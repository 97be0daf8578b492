"""One input dialog for the debugger's commands (add a point, memory address, register value): a title,
the syntax as hint lines, an Input with completions, optional preset buttons.  `check` runs on Enter and
keeps the dialog open with its message, so a typo is fixed in place instead of retyped."""
from __future__ import annotations

from typing import Callable, Iterable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, Static


class PromptScreen(ModalScreen[str | None]):
    """Returns the text entered (stripped), or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    PromptScreen { align: center middle; }
    PromptScreen > Vertical { width: 96; max-width: 100%; height: auto; max-height: 90%;
                              border: round $primary; background: $surface; padding: 0 1; }
    PromptScreen #title { text-style: bold; }
    PromptScreen #hint { color: $text-muted; }
    PromptScreen #error { color: $error; height: auto; }
    PromptScreen Horizontal { height: auto; }
    PromptScreen Button { margin: 0 1 0 0; min-width: 6; }
    """

    def __init__(self, title: str, hint: str = "", value: str = "", *, suggestions: Iterable[str] = (),
                 presets: Iterable[str] = (), check: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.hint = hint
        self.value = value
        self.suggestions = list(dict.fromkeys(suggestions))
        self.presets = list(presets)
        self.check = check

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, id="title")
            if self.hint:
                yield Static(Text(self.hint), id="hint")
            sugg = SuggestFromList(self.suggestions, case_sensitive=False) if self.suggestions else None
            yield Input(self.value, id="input", suggester=sugg, select_on_focus=True)
            yield Static("", id="error")
            if self.presets:
                with Horizontal():
                    for i, p in enumerate(self.presets):
                        yield Button(p, id=f"preset-{i}", compact=True)

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit(event.value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        bid = event.button.id or ""
        if bid.startswith("preset-"):
            self._submit(self.presets[int(bid[7:])])

    def _submit(self, text: str) -> None:
        text = text.strip()
        err = self.check(text) if self.check is not None else ""
        if err:
            self.query_one("#error", Static).update(Text(err))
            return
        self.dismiss(text)

    def action_cancel(self) -> None:
        self.dismiss(None)


def parse_number(text: str) -> int:
    """`0x1f`, `31`, `0b11`, or bare hex with a-f digits (`1bfef8`); negative values wrap to 64 bits."""
    t = text.strip().replace("_", "")
    neg = t.startswith("-")
    t = t.lstrip("+-")
    try:
        v = int(t, 0)
    except ValueError:
        try:
            v = int(t, 16)
        except ValueError:
            raise ValueError(f"{text!r} is not a number: 0x1f (hex) or 31 (decimal)") from None
    return (-v if neg else v) & (2**64 - 1)
