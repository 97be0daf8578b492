"""The docs stand alone: nothing in the repository points at files only its developers had
(/work/..., ../shared/...), and every relative link in the Markdown files resolves in the tree."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"/work/|\.\./shared/|\.\./\.library")


def _tracked(*patterns: str) -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", *patterns], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):   # an sdist, not a checkout: every file there is
        return [p for pat in patterns for p in REPO.glob(f"**/{pat}") if ".venv" not in p.parts]
    return [REPO / p for p in out.decode().split("\0") if p]


TEXT = [p for p in _tracked("*.md", "*.py", "*.toml", "*.S", "*.inc", "*.txt", "*.tcss", "Makefile", "*.ld", "*.sh")
        if p.is_file() and p != Path(__file__).resolve()]


def test_no_file_points_outside_the_repository():
    bad = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in TEXT
           for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not bad, "\n".join(bad)


MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", [p for p in TEXT if p.suffix == ".md"], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    missing = []
    for target in MD_LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#")[0]
        if path and not (doc.parent / path).exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(REPO)} links to files that do not exist: {missing}"
