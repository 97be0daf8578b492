"""The debugger panels' arrangement (apfdbg.ui.layout.plan): every visible panel placed, none overlapping,
each at least its minimum width when the screen allows it."""
from __future__ import annotations

import itertools

import pytest

from apfdbg.ui.layout import DEBUG_PANELS, MIN_W, plan, split

PREF = {"regs": 21, "gmem": 19, "points": 6}


def overlap(a, b) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


@pytest.mark.parametrize("width,height", [(200, 28), (160, 24), (120, 24), (100, 20)])
def test_every_combination_is_placed_without_overlap(width, height):
    for n in range(1, len(DEBUG_PANELS) + 1):
        for vis in itertools.combinations(DEBUG_PANELS, n):
            out = plan(width, height, list(vis), PREF)
            assert set(out) == set(vis)
            for (a, ra), (b, rb) in itertools.combinations(out.items(), 2):
                assert not overlap(ra, rb), (vis, a, b)
            for pid, (x, y, w, h) in out.items():
                assert x + w <= width and y + h <= height
                if width >= 120:        # below, the compact layout shows one panel at a time
                    assert w >= MIN_W[pid] and h >= 3, (vis, pid, w, h)


def test_wide_screen_columns_and_narrow_screen_stacks():
    wide = plan(200, 28, list(DEBUG_PANELS), PREF)
    assert wide["regs"][0] == wide["stack"][0] and wide["gmem"][0] == wide["points"][0]   # 3 columns
    assert wide["gmem"][2] >= 78                                    # room for the ASCII column
    narrow = plan(120, 24, list(DEBUG_PANELS), PREF)
    assert narrow["code"][0] == narrow["gmem"][0] == narrow["points"][0] == 0           # 2 columns
    assert narrow["code"][3] >= 24 // 2 - 4                         # code keeps a good share
    two = plan(120, 24, ["code", "regs"], PREF)
    assert two["code"][1] == two["regs"][1] == 0                    # side by side


def test_split_keeps_half_for_the_flexible_panel():
    assert split(24, [None, 19, 6], [3, 6, 8]) == [12, 6, 6]     # code, guest memory, breakpoints
    assert split(40, [21, None]) == [20, 20]                     # registers, stack
    assert split(60, [21, None]) == [21, 39]
