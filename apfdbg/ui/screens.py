"""Modal screens: help (every key), the timeline filter, the panel chooser."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, SelectionList, Static

from .bindings import KEYS
from .fmt import APF_KINDS


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 96; max-width: 100%; height: 90%; border: round $primary;
                                  background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        table = Table(box=None, expand=True, show_header=True, header_style="bold", pad_edge=False)
        table.add_column("key", style="bold", max_width=16)
        table.add_column("what it does", ratio=1)
        group = None
        for k in KEYS:
            if k.group != group:
                group = k.group
                table.add_row(Text(f"\n{group}", style="bold underline"), "")
            table.add_row(k.shown_key.replace(",", " / "), k.help)
        table.add_row(Text("\nEverywhere", style="bold underline"), "")
        table.add_row("tab / shift+tab", "Focus the next / previous panel.")
        table.add_row("arrows pgup pgdn home end", "Move the cursor of the focused panel (timeline, works, "
                      "MSR accesses, memory map, code, registers, breakpoints) or scroll it.")
        table.add_row("ctrl+p", "Command palette: every key above as a command, themes, panels.")
        table.add_row("escape", "Close this screen or a dialog; restore a zoomed panel.")
        table.add_row("right (in a dialog)", "Accept the completion shown (symbols, catch forms).")
        with VerticalScroll():
            yield Static(Text("apfdbg keys", style="bold"))
            yield Static(table)


class FilterScreen(ModalScreen[tuple | None]):
    """Choose the vCPUs and event kinds the timeline shows. Returns (kinds|None, vcpus|None)."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    FilterScreen { align: center middle; }
    FilterScreen > Vertical { width: 90; max-width: 100%; height: 90%; border: round $primary;
                              background: $surface; padding: 0 1; }
    FilterScreen Horizontal#lists { height: 1fr; }
    FilterScreen SelectionList { height: 1fr; }
    FilterScreen #vcpus { width: 22; }
    FilterScreen Horizontal#buttons { height: auto; }
    FilterScreen Button { margin: 0 1 0 0; min-width: 10; }
    """

    def __init__(self, kinds: dict[str, int], nvcpus: int, cur_kinds, cur_vcpus) -> None:
        super().__init__()
        self.kinds = kinds
        self.nvcpus = nvcpus
        self.cur_kinds = cur_kinds
        self.cur_vcpus = cur_vcpus

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Timeline filter: space toggles, enter applies")
            with Horizontal(id="lists"):
                vc = [(f"vCPU {i}", i, self.cur_vcpus is None or i in self.cur_vcpus) for i in range(self.nvcpus)]
                vc.append(("host (no vCPU)", -1, self.cur_vcpus is None or None in self.cur_vcpus))
                yield SelectionList(*vc, id="vcpus")
                ks = [(f"{k}  ({n:,})", k, self.cur_kinds is None or k in self.cur_kinds)
                      for k, n in sorted(self.kinds.items())]
                yield SelectionList(*ks, id="kinds")
            with Horizontal(id="buttons"):
                yield Button("Apply", id="apply", variant="primary")
                yield Button("APF only", id="apf")
                yield Button("Everything", id="all")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#kinds", SelectionList).focus()

    def key_enter(self) -> None:
        self._apply()

    def _apply(self) -> None:
        kinds = set(self.query_one("#kinds", SelectionList).selected)
        vcpus = {None if v == -1 else v for v in self.query_one("#vcpus", SelectionList).selected}
        all_kinds = kinds >= set(self.kinds)
        all_vcpus = len(vcpus) == self.nvcpus + 1
        self.dismiss((None if all_kinds else frozenset(kinds), None if all_vcpus else frozenset(vcpus)))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            self._apply()
        elif event.button.id == "apf":
            self.dismiss((frozenset(APF_KINDS), None))
        elif event.button.id == "all":
            self.dismiss((None, None))
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PanelsScreen(ModalScreen[set | None]):
    """Which panels are shown. Returns the set of hidden panel ids."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    PanelsScreen { align: center middle; }
    PanelsScreen > Vertical { width: 50; height: auto; max-height: 90%; border: round $primary;
                              background: $surface; padding: 0 1; }
    PanelsScreen SelectionList { height: auto; }
    PanelsScreen Horizontal { height: auto; }
    """

    def __init__(self, panels: list[tuple[str, str]], hidden: set[str]) -> None:
        super().__init__()
        self.panels = panels
        self.hidden = hidden

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Panels shown (space toggles, enter applies)")
            yield SelectionList(*[(title, pid, pid not in self.hidden) for pid, title in self.panels], id="list")
            with Horizontal():
                yield Button("Apply", id="apply", variant="primary")
                yield Button("Cancel", id="cancel")

    def key_enter(self) -> None:
        self._apply()

    def _apply(self) -> None:
        shown = set(self.query_one("#list", SelectionList).selected)
        self.dismiss({pid for pid, _t in self.panels if pid not in shown})

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            self._apply()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
