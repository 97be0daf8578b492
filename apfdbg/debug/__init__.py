"""The debugger's own logic, above the machine's primitives (apfdbg/machine/debug.py): the point
syntax (`points`), the stepping commands (`stepping`) and DWARF line tables (`debuginfo`). The
engine runs them as commands; the TUI and the gdb stub reach them through the engine."""
