"""Source-level debug info of a guest image: DWARF line tables (address <-> file:line) and the
source files they name.  Used by the Code panel, file:line breakpoints and source-line steps."""
from __future__ import annotations

import bisect
import io
from pathlib import Path



class LineTable:
    """DWARF line info of an image: address -> (file, line), (file, line) -> first address."""

    def __init__(self, elf: bytes | None, image_dir: Path | None = None) -> None:
        self.image_dir = image_dir
        self.addrs: list[int] = []
        self.locs: list[tuple[str, int] | None] = []
        self.line_addr: dict[tuple[str, int], int] = {}
        self._sources: dict[str, list[str] | None] = {}
        if elf:
            try:
                self._load(elf)
            except Exception:           # no or unreadable DWARF: no source view
                self.addrs, self.locs = [], []

    def _load(self, elf: bytes) -> None:
        from elftools.elf.elffile import ELFFile
        f = ELFFile(io.BytesIO(elf))
        if not f.has_dwarf_info():
            return
        dw = f.get_dwarf_info()
        rows: list[tuple[int, tuple[str, int] | None]] = []
        for cu in dw.iter_CUs():
            lp = dw.line_program_for_CU(cu)
            if lp is None:
                continue
            top = cu.get_top_DIE()
            comp = top.attributes.get("DW_AT_comp_dir")
            comp_dir = comp.value.decode(errors="replace") if comp else ""
            files = lp["file_entry"]
            dirs = lp["include_directory"]
            base = 0 if lp.header.version >= 5 else 1

            def path_of(i: int) -> str:
                k = i - base
                if not 0 <= k < len(files):
                    return "?"
                fe = files[k]
                name = fe.name.decode(errors="replace")
                d = fe.dir_index - (0 if lp.header.version >= 5 else 1)
                if 0 <= d < len(dirs) and not name.startswith("/"):
                    name = f"{dirs[d].decode(errors='replace')}/{name}"
                if comp_dir and not name.startswith("/"):
                    return f"{comp_dir}/{name}"
                return name
            for e in lp.get_entries():
                st = e.state
                if st is None:
                    continue
                if st.end_sequence:
                    rows.append((st.address, None))
                    continue
                loc = (path_of(st.file), st.line)
                rows.append((st.address, loc))
                if loc not in self.line_addr or st.address < self.line_addr[loc]:
                    self.line_addr[loc] = st.address
        rows.sort(key=lambda r: r[0])
        for a, loc in rows:
            if self.addrs and self.addrs[-1] == a:
                self.locs[-1] = loc if loc is not None else self.locs[-1]
                continue
            self.addrs.append(a)
            self.locs.append(loc)

    def __bool__(self) -> bool:
        return bool(self.addrs)

    def where(self, addr: int) -> tuple[str, int] | None:
        i = bisect.bisect_right(self.addrs, addr) - 1
        return self.locs[i] if i >= 0 else None

    def source(self, path: str) -> list[str] | None:
        """The lines of a source file: its own path (relative: to the current directory, then to the
        image's), else a file of the same name beside the image (a guest built elsewhere; the bundled
        guests ship their sources beside their images)."""
        if path in self._sources:
            return self._sources[path]
        lines = None
        p = Path(path)
        cands = [p]
        if not p.is_absolute() and self.image_dir is not None:
            cands.append(self.image_dir / p)
        if self.image_dir is not None:
            cands.append(self.image_dir / p.name)
        for c in cands:
            try:
                if c.is_file():
                    lines = c.read_text(errors="replace").splitlines()
                    break
            except OSError:
                continue
        self._sources[path] = lines
        return lines

    def is_line_start(self, addr: int) -> bool:
        """True if a line-table row starts at `addr` (where a source-line step stops)."""
        i = bisect.bisect_left(self.addrs, addr)
        return i < len(self.addrs) and self.addrs[i] == addr and self.locs[i] is not None

    def resolve(self, spec_file: str, line: int) -> tuple[tuple[str, int], int] | None:
        """`file:line` -> ((path, line), first address), matching `spec_file` against the end of the
        table's paths; a line without code moves to the next line that has some (as gdb does)."""
        want = spec_file.replace("\\", "/")
        files = sorted({f for f, _ in self.line_addr
                        if f == want or f.endswith("/" + want.lstrip("./"))})
        if not files:
            return None
        best = None
        for f in files:
            for (g, n), a in self.line_addr.items():
                if g == f and n >= line and (best is None or (n, a) < (best[0][1], best[1])):
                    best = ((g, n), a)
        return best

    def locations(self, spec_file: str, line: int, function_of) -> tuple[tuple[str, int], list[int]] | None:
        """Every place `file:line` starts: the first row of that line in each function holding
        one (an inlined function has a copy in each caller), as gdb's multi-location breakpoints."""
        hit = self.resolve(spec_file, line)
        if hit is None:
            return None
        (path, n), _ = hit
        firsts: dict = {}
        for a, loc in zip(self.addrs, self.locs):
            if loc == (path, n):
                key = function_of(a)
                if key not in firsts or a < firsts[key]:
                    firsts[key] = a
        return (path, n), sorted(firsts.values())

    def files(self) -> list[str]:
        return sorted({f for f, _ in self.line_addr})


_tables: dict[int, LineTable] = {}


def line_table(image) -> LineTable:
    key = id(image.elf)
    t = _tables.get(key)
    if t is None:
        path = getattr(image, "path", None)
        t = _tables[key] = LineTable(image.elf, Path(path).resolve().parent if path else None)
    return t
