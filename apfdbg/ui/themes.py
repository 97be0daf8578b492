"""apfdbg's own Textual themes: the TOML files in the repository's themes/ directory."""
from __future__ import annotations

import tomllib
from pathlib import Path

from textual.theme import Theme

THEMES_DIR = Path(__file__).resolve().parents[2] / "themes"
DEFAULT_THEME = "apf-night"
_FIELDS = ("primary", "secondary", "warning", "error", "success", "accent", "foreground", "background",
           "surface", "panel", "boost")

# Used when the themes/ directory is not there (an installed wheel): the same as themes/apf-night.toml.
_FALLBACK = {"name": "apf-night", "dark": True, "primary": "#5aa9e6", "secondary": "#8f7fe0",
             "accent": "#7fd4c1", "warning": "#f2b84b", "error": "#ef6f6c", "success": "#8bd17c",
             "foreground": "#d7dde8", "background": "#0f131a", "surface": "#141a23", "panel": "#1c2430"}


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
    themes = []
    if THEMES_DIR.is_dir():
        for f in sorted(THEMES_DIR.glob("*.toml")):
            themes.append(load_theme_file(f))
    if not any(t.name == DEFAULT_THEME for t in themes):
        themes.insert(0, theme_from_dict(_FALLBACK))
    themes.sort(key=lambda t: (t.name != DEFAULT_THEME, t.name))
    return themes
