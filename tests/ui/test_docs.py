"""docs/ui.md's key table is generated from apfdbg.ui.bindings.KEYS: it must be the current one."""
from __future__ import annotations

from apfdbg.ui.bindings import KEYS, keys_markdown, update_doc

from .conftest import ROOT


def test_docs_key_table_is_current():
    text = (ROOT / "docs" / "ui.md").read_text(encoding="utf-8")
    assert update_doc(text) == text, "stale key table: python -m apfdbg.ui.bindings --write docs/ui.md"


def test_key_table_has_every_key():
    table = keys_markdown()
    for k in KEYS:
        assert f"`{k.action}`" in table or k.key.isdigit()      # the digits share one row
