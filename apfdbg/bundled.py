"""What apfdbg ships with it: the demo and reference guests (images and sources), the bundled
scenarios (default, tour, pressure) and themes. Found as package data through importlib.resources,
so a wheel install finds them as a checkout does (in the checkout, apfdbg/data/ links to guests/
and themes/ at the top level)."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _path(*parts: str) -> Path:
    # apfdbg is installed as files on disk (pip, pipx, editable): the Traversable is a real path.
    return Path(str(files("apfdbg").joinpath(*parts)))


def guest(name: str) -> Path:
    """A bundled guest image: 'apfdemo', 'refkernel'."""
    return _path("data", "guests", name, f"{name}.elf")


DEFAULT_GUEST = guest("apfdemo")
SCENARIOS = _path("scenarios")
THEMES = _path("data", "themes")


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIOS.glob("*.toml"))


def scenario(name: str) -> Path | None:
    """The bundled scenario called `name` (with or without .toml), or None."""
    stem = name.removesuffix(".toml")
    if "/" in stem or stem not in scenario_names():
        return None
    return SCENARIOS / f"{stem}.toml"
