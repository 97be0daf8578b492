"""Every key of the TUI, in one table: the app's BINDINGS, the footer, the help screen, the command
palette and docs/ui.md are all generated from it (`python -m apfdbg.ui.bindings --write docs/ui.md`
rewrites the table between the `keys` markers; tests/ui/test_docs.py checks it is current)."""
from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    key: str            # Textual key name(s), comma separated
    action: str         # app action (without "action_")
    label: str          # short label (footer)
    help: str           # one sentence (help screen, palette)
    group: str
    footer: bool = True
    display: str = ""   # how the help screen writes the key

    @property
    def shown_key(self) -> str:
        return self.display or self.key


KEYS: list[Key] = [
    # --- run control ---
    Key("space", "toggle_run", "run/pause", "Run or pause the guest (at the speed the speed control sets; "
        "at 'one event per key' it steps one event).", "Run"),
    Key("s", "step_instruction", "step", "Step into: one instruction on the selected vCPU (into calls and "
        "int; when an event is due first, deliver it and stop at its handler).", "Run"),
    Key("S", "step_over", "step over", "Step over: one instruction on the selected vCPU, running calls and int "
        "through to the next instruction.", "Run", footer=False),
    Key("u", "step_out", "step out", "Step out: run the selected vCPU until the current function returns, or "
        "the current interrupt handler leaves by iretq.", "Run", footer=False),
    Key("j", "step_line", "line into", "Source step: run the selected vCPU to the next source line (DWARF), "
        "into calls.", "Run", footer=False),
    Key("J", "step_line_over", "line over", "Source next: run the selected vCPU to the next source line of "
        "this function, over calls.", "Run", footer=False),
    Key("g", "run_to_cursor", "run to cursor", "Run until the selected vCPU reaches the line selected in the "
        "Code panel (other stops win).", "Run", footer=False),
    Key("k", "toggle_lock", "lock", "Scheduler-locking: stepping freezes the other vCPUs (default), or lets "
        "them run meanwhile.", "Run", footer=False),
    Key("full_stop", "step_event", "step event", "Run until the next event, then pause.", "Run", display="."),
    Key("n", "next_apf", "next APF", "Run until the next async-PF event (not present, page ready, completed, "
        "doublefault, sync fault, wake-all, queue cleared), then pause.", "Run"),
    Key("plus,equals_sign", "faster", "faster", "Speed up: one event per key, slow motion (1 to 1000 events "
        "per second), full speed.", "Run", display="+"),
    Key("minus", "slower", "slower", "Slow down (the other way along the same scale).", "Run", display="-"),
    # --- host actions (scenario actions) ---
    Key("o", "page_out_selected", "page out", "Page out the frame selected in the host memory map.", "Host"),
    Key("w", "page_out_working", "out working", "Page out the selected vCPU's current working page (the page "
        "its next instruction touches, else the one it last faulted on).", "Host"),
    Key("R", "page_out_random", "out random", "Page out 8 random frames (of the pager's frames if the "
        "scenario has a pager).", "Host", footer=False),
    Key("c", "complete_selected", "complete", "Complete the work selected in the works panel now (its "
        "page-in finishes).", "Host"),
    Key("e", "complete_oldest", "complete oldest", "Complete the oldest work still paging in on the selected "
        "vCPU.", "Host", footer=False),
    Key("C", "complete_all", "complete all", "Complete every work still paging in, on every vCPU.", "Host",
        footer=False),
    Key("a", "wake_all", "wake-all", "Queue a wake-all on the selected vCPU (kvm_async_pf_wakeup_all).", "Host"),
    Key("X", "reset_vcpu", "reset vCPU", "Reset the selected vCPU's async-PF state (msr_val = 0, queue "
        "cleared, hash reset).", "Host", footer=False),
    # --- debugger ---
    Key("b", "toggle_breakpoint", "breakpoint", "Toggle a breakpoint at the line selected in the Code panel, on "
        "every vCPU (a run stops there: 'breakpoint N at SYMBOL on vCPU M').", "Debug", footer=False),
    Key("B", "add_point", "points", "Breakpoints panel: add a breakpoint (pf_handler, trap.c:107 if "
        "cr2 == 1, vcpu 1), watchpoint (watch/rwatch/awatch ADDRESS SIZE) or catchpoint (catch apf "
        "not-present, catch msr, catch gp, catch halt, catch triple-fault).", "Debug"),
    Key("delete,backspace", "remove_point", "delete point", "Breakpoints panel: delete the selected "
        "breakpoint, watchpoint or catchpoint.", "Debug", footer=False),
    Key("enter", "edit_register", "edit register", "Registers panel: edit the selected register (hex "
        "0x.. or decimal; general registers, rip, rflags, cr2, fs/gs base).", "Debug", footer=False),
    Key("M", "memory_address", "memory address", "Guest memory: show another address (reason, rsp, rip, "
        "cr2, a symbol, apf_reason_area + 64, u64(rsp), phys 0x1000).", "Debug", footer=False),
    Key("l", "toggle_source", "source/asm", "Code panel: switch between the disassembly and the source line "
        "(DWARF line info).", "Debug", footer=False),
    # --- view ---
    Key("v", "next_vcpu", "vCPU+", "Select the next vCPU.", "View"),
    Key("V", "prev_vcpu", "vCPU-", "Select the previous vCPU.", "View", footer=False),
    Key("1", "focus_panel('vcpus')", "vCPUs", "Focus the vCPUs panel.", "View", footer=False),
    Key("2", "focus_panel('msr')", "MSRs", "Focus the MSR accesses panel.", "View", footer=False),
    Key("3", "focus_panel('hash')", "hash", "Focus the async-PF hash panel.", "View", footer=False),
    Key("4", "focus_panel('works')", "works", "Focus the works (done / in flight) panel.", "View", footer=False),
    Key("5", "focus_panel('reason')", "reason", "Focus the guest reason memory panel.", "View", footer=False),
    Key("6", "focus_panel('timeline')", "timeline", "Focus the event timeline.", "View", footer=False),
    Key("7", "focus_panel('memory')", "memory", "Focus the host memory map.", "View", footer=False),
    Key("8", "focus_panel('explain')", "explain", "Focus the Explain panel.", "View", footer=False),
    Key("9", "focus_panel('console')", "console", "Focus the guest console.", "View", footer=False),
    Key("d", "focus_panel('code')", "code", "Focus the Code panel (disassembly or source around RIP).", "View",
        footer=False),
    Key("r", "focus_panel('regs')", "registers", "Focus the Registers panel.", "View", footer=False),
    Key("y", "focus_panel('stack')", "stack", "Focus the Stack panel (qwords from RSP, the interrupt frame).",
        "View", footer=False),
    Key("m", "focus_panel('gmem')", "guest memory", "Focus the Guest memory panel (hexdump; M picks the "
        "address).", "View", footer=False),
    Key("z", "zoom", "zoom", "Zoom the focused panel to the whole screen (again, or Escape, to restore).", "View"),
    Key("h", "hide_panel", "hide", "Hide the focused panel.", "View", footer=False),
    Key("H", "show_all", "show all", "Show every panel again.", "View", footer=False),
    Key("p", "panels", "panels", "Choose which panels are shown.", "View", footer=False),
    Key("f", "filter", "filter", "Filter the timeline by vCPU and event kind.", "View"),
    Key("F", "apf_only", "APF only", "Timeline: toggle between every event and async-PF events only.", "View",
        footer=False),
    Key("t", "next_theme", "theme", "Switch to the next theme.", "View"),
    Key("enter", "tour_next", "next step", "Guided tour: go to the next step.", "Tour"),
    Key("question_mark", "help", "help", "Show every key.", "App", display="?"),
    Key("q", "quit", "quit", "Quit apfdbg.", "App"),
]


def app_bindings() -> list[Binding]:
    return [Binding(k.key, k.action, k.label, show=k.footer, key_display=k.display or None) for k in KEYS]


def by_action(action: str) -> Key:
    for k in KEYS:
        if k.action == action:
            return k
    raise KeyError(action)


# --- docs/ui.md -------------------------------------------------------------------------------------
DOC_BEGIN = "<!-- keys: generated by python -m apfdbg.ui.bindings --write docs/ui.md -->"
DOC_END = "<!-- /keys -->"
_KEY_SHOWN = {"plus": "+", "equals_sign": "=", "minus": "-", "full_stop": ".", "question_mark": "?"}
#: rows for keys that are not app bindings (panels and Textual handle them), after the digit row
_DOC_EXTRA = [
    ("`tab` / `shift+tab`", "View", "Focus the next / previous panel.", ""),
    ("arrows, `pgup` `pgdn` `home` `end`", "View", "Move the focused panel's cursor (timeline, MSR accesses, "
     "works, console, breakpoints, the register grid; the memory map in two dimensions) or scroll it.", ""),
]


def keys_markdown() -> str:
    """The key table of docs/ui.md (the digit keys in one row, as the panel table numbers them)."""
    out = ["| key | group | what it does | action |", "|---|---|---|---|"]
    digits_done = False
    for k in KEYS:
        if k.key.isdigit():
            if not digits_done:
                digits_done = True
                out.append("| `1` … `9` | View | Focus a panel (numbers above). | `focus_panel(...)` |")
                out += [f"| {a} | {g} | {h} | {act} |" for a, g, h, act in _DOC_EXTRA]
            continue
        keys = " / ".join(f"`{_KEY_SHOWN.get(n, n)}`" for n in k.key.split(","))
        out.append(f"| {keys} | {k.group} | {k.help} | `{k.action}` |")
    return "\n".join(out)


def update_doc(text: str) -> str:
    """`text` (docs/ui.md) with the table between the markers replaced by keys_markdown()."""
    head, sep, rest = text.partition(DOC_BEGIN)
    _old, sep2, tail = rest.partition(DOC_END)
    if not sep or not sep2:
        raise ValueError(f"docs/ui.md lacks the markers {DOC_BEGIN!r} ... {DOC_END!r}")
    return f"{head}{DOC_BEGIN}\n{keys_markdown()}\n{DOC_END}{tail}"


if __name__ == "__main__":
    import sys
    from pathlib import Path
    if sys.argv[1:2] == ["--write"]:
        path = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/ui.md")
        path.write_text(update_doc(path.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(keys_markdown())
