"""A regular install works (not `pip install -e`): `python -m build` makes an sdist and, from it, a
wheel with the C accelerator; the wheel, installed into a fresh venv, runs headless, a bundled
scenario and the TUI from a directory outside the checkout, finding the bundled guests, scenarios
and themes as package data."""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.fail("the test extra installs `build`: pip install -e '.[test]'")
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; returns its bin/ directory."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    wheel = next(dist.glob("*.whl"))
    r = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return env_dir / "bin"


@pytest.fixture()
def elsewhere(tmp_path) -> Path:
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


def _run(bin_dir: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / "apfdbg"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_sdist_holds_the_sources_the_wheel_the_data_and_the_accelerator(dist):
    sdist = next(dist.glob("*.tar.gz"))
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert "apfdbg/machine/_accel.c" in names
    with zipfile.ZipFile(next(dist.glob("*.whl"))) as z:
        names = set(z.namelist())
    assert any(n.startswith("apfdbg/machine/_accel") and n.endswith(".so") for n in names), \
        "the wheel (built from the sdist) has no C accelerator"
    for need in ("apfdbg/data/guests/apfdemo/apfdemo.elf", "apfdbg/data/guests/apfdemo/apfdemo.S",
                 "apfdbg/data/guests/refkernel/refkernel.elf", "apfdbg/data/guests/refkernel/apf.c",
                 "apfdbg/data/themes/apf-night.toml", "apfdbg/scenarios/default.toml",
                 "apfdbg/scenarios/tour.toml", "apfdbg/scenarios/pressure.toml"):
        assert need in names


def test_the_installed_package_is_not_the_checkout(installed, elsewhere):
    r = subprocess.run([str(installed / "python"), "-c",
                        "import apfdbg, apfdbg.machine._accel as a; print(apfdbg.__file__); print(a.__file__)"],
                       cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert str(ROOT) not in r.stdout and "site-packages" in r.stdout


def test_headless_run_of_the_bundled_guest(installed, elsewhere):
    r = _run(installed, elsewhere, "run", "--headless", "--max-insns", "3000000")
    assert "Traceback" not in r.stderr, r.stderr
    assert "iteration 128" in r.stdout, r.stdout[-2000:]       # the demo guest's console
    assert r.returncode == 6 and "instruction limit 3000000 reached" in r.stdout


def test_headless_run_of_the_bundled_pressure_scenario(installed, elsewhere):
    r = _run(installed, elsewhere, "run", "--scenario", "pressure", "--headless", "--max-insns", "4000000")
    assert "Traceback" not in r.stderr, r.stderr
    assert "cannot read" not in r.stderr and "no such file" not in r.stderr, r.stderr
    assert "refkernel" in r.stdout, r.stdout[-2000:]     # the reference kernel's console banner


def test_an_unknown_scenario_name_lists_the_bundled_ones(installed, elsewhere):
    r = _run(installed, elsewhere, "run", "--scenario", "nosuch", "--headless")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "pressure" in r.stderr and "tour" in r.stderr, r.stderr


def _read(fd: int, seconds: float, until: bytes) -> bytes:
    out, end = b"", time.monotonic() + seconds
    while time.monotonic() < end and until not in out:
        if select.select([fd], [], [], 0.05)[0]:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


@pytest.mark.parametrize("args", [(), ("--tour",)], ids=["default", "tour"])
def test_the_tui_opens_on_the_bundled_guest_and_quits(installed, elsewhere, args):
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(elsewhere)
        os.environ.pop("PYTHONPATH", None)
        os.environ.update(TERM="xterm-256color", COLUMNS="140", LINES="45")
        os.execv(str(installed / "apfdbg"), [str(installed / "apfdbg"), *args])
    try:
        screen = _read(fd, 60, b"apfdemo.elf")
        assert b"apfdemo.elf" in screen, screen[-2000:]   # the status line names the guest
        os.write(fd, b"q")
        tail = _read(fd, 10, b"\x1b[?1049l")
        end = time.monotonic() + 10
        while time.monotonic() < end:
            p, status = os.waitpid(pid, os.WNOHANG)
            if p:
                break
            _read(fd, 0.1, b"\x00")
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the TUI did not quit on q")
        assert os.waitstatus_to_exitcode(status) == 0
        assert b"Traceback" not in screen + tail
    finally:
        os.close(fd)


def test_the_bundled_guests_sources_are_found_from_any_directory(tmp_path, monkeypatch):
    """The Code panel's source view (l) of a bundled guest: its DWARF names paths relative to the
    directory it was built in; the sources ship beside the image."""
    from apfdbg import bundled
    from apfdbg.debug.debuginfo import line_table
    from apfdbg.machine.image import load_image
    monkeypatch.chdir(tmp_path)
    for name, sample in (("refkernel", "apf.c"), ("apfdemo", "apfdemo.S")):
        lt = line_table(load_image(bundled.guest(name)))
        path = next(f for f in lt.files() if f.endswith(sample))
        assert lt.source(path), f"{name}: {path} not found"
