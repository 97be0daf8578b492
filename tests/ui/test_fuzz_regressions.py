"""TUI crashes bench/fuzz.py (target tui) found, each as the shortest key sequence that hit it."""
from __future__ import annotations

from textual import events

from .conftest import make_app, make_engine, make_ref_engine

SIZE = (160, 50)


async def test_a_hidden_panel_shown_again_after_the_run_moved_on():
    """fuzz tui:1199, 147, 490 ...: a hidden panel drops its view of old snapshots but kept its rows;
    shown again (its number key) before the next frame, it drew those rows from no view
    (AttributeError: 'NoneType' object has no attribute 'base')."""
    app = make_app(make_engine(run_to=400_000))
    async with app.run_test(size=SIZE) as pilot:
        for panel in ("2", "6", "4", "5", "9"):         # msr, timeline, works, reason, console
            await pilot.press(panel, "h")                # focus it, hide it
            await pilot.press("full_stop", "full_stop")  # new snapshots while it is hidden
            await pilot.press(panel, "pagedown", "end", "up")
            app.export_screenshot()                      # draws every line of it now
            assert app.panel(app.focused_panel().PANEL_ID).display


async def test_paging_an_option_list_before_its_first_layout():
    """fuzz tui:60, 947, 2619 ...: pagedown in the command palette (ctrl+p) while its options had
    arrived but were not laid out raised KeyError: 0 in Textual's OptionList._move_page. The palette
    is an OptionList; the same state, made on purpose: options added, paged at once."""
    from textual.app import App
    from textual.widgets import OptionList
    import apfdbg.ui.app  # noqa: F401  (installs apfdbg.ui.textual_fixes)

    class One(App):
        def compose(self):
            yield OptionList()

    app = One()
    async with app.run_test():
        ol = app.query_one(OptionList)
        ol.add_options([f"option {i}" for i in range(50)])
        ol.highlighted = 0
        ol.action_page_down()       # before the layout: nothing happens
        assert ol.highlighted == 0


async def test_a_key_still_queued_when_the_app_has_closed():
    """fuzz tui:1199 (closing): a key processed after the screen stack emptied raised
    ScreenStackError. Such a key is dropped."""
    app = make_app(make_engine())
    async with app.run_test(size=SIZE):
        pass
    assert not app.get_screen_stack()
    key = events.Key("x", "x")
    await app._on_key(key)
    assert key._no_default_action


async def test_the_source_view_asked_for_while_the_code_panel_is_hidden():
    """fuzz tui:6571, 6572: `l` on a hidden Code panel showed it in source mode with the rows of the
    disassembly (IndexError in render_row): showing it did not refresh a view of the same snapshot."""
    app = make_app(make_ref_engine("pf_handler"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d", "h")          # focus the Code panel, hide it
        assert not app.panel("code").display
        await pilot.press("l")               # the source view: shows the panel again
        app.export_screenshot()
        code = app.panel("code")
        assert code.display and code.source_mode
        assert code.rows == len(code._lines) > 0


async def test_a_poll_while_the_app_closes():
    """fuzz tui:5999: the poll timer fired while the app was closing, with its screen gone
    (NoMatches '#vcpus'). A poll then does nothing."""
    app = make_app(make_engine())
    async with app.run_test(size=SIZE):
        pass
    app.poll(force=True)


async def test_a_zoomed_panel_that_the_layout_hides():
    """fuzz tui:1129: the zoomed (maximized) panel stays on screen when the layout hides it (compact
    mode, another panel's key), so it must keep a view; it was drawn from none (AttributeError)."""
    app = make_app(make_engine(run_to=400_000))
    async with app.run_test(size=(90, 30)) as pilot:     # compact: one panel beside the vCPUs
        await pilot.press("2", "z", "3")                 # msr, zoomed; then the hash panel's key
        await pilot.press("full_stop", "full_stop")      # new snapshots
        app.export_screenshot()
        shown = app.screen.maximized
        if shown is not None:
            assert shown.ctx is not None and shown.ctx.snap is app.snap
