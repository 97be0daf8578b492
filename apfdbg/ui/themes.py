"""apfdbg's own Textual themes: the TOML files of themes/, shipped as package data (apfdbg.bundled)."""
from __future__ import annotations

import tomllib
from pathlib import Path

from textual.theme import Theme

from .. import bundled

THEMES_DIR = bundled.THEMES
DEFAULT_THEME = "apf-night"
_FIELDS = ("primary", "secondary", "warning", "error", "success", "accent", "foreground", "background",
           "surface", "panel", "boost")


class ThemeError(ValueError):
    pass


def theme_from_dict(d: dict, where: str = "theme") -> Theme:
    if "name" not in d or "primary" not in d:
        raise ThemeError(f"{where}: a theme needs at least 'name' and 'primary'")
    unknown = set(d) - {"name", "dark", "variables", "luminosity_spread", "text_alpha", *_FIELDS}
    if unknown:
        raise ThemeError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    kw = {k: d[k] for k in _FIELDS if k in d}
    return Theme(name=d["name"], dark=bool(d.get("dark", True)), variables=dict(d.get("variables", {})), **kw)


def load_theme_file(path: str | Path) -> Theme:
    p = Path(path)
    try:
        return theme_from_dict(tomllib.loads(p.read_text(encoding="utf-8")), str(p))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ThemeError(f"{p}: {e}") from None


def bundled_themes() -> list[Theme]:
    themes = [load_theme_file(f) for f in sorted(THEMES_DIR.glob("*.toml"))]
    if not any(t.name == DEFAULT_THEME for t in themes):
        raise ThemeError(f"the bundled theme {DEFAULT_THEME} is missing from {THEMES_DIR}: a broken install")
    themes.sort(key=lambda t: (t.name != DEFAULT_THEME, t.name))
    return themes
