"""The target description and the register file behind g/G/p/P."""
import xml.etree.ElementTree as ET

import pytest
from unicorn import x86_const as X

from apfdbg.gdbstub import target as t
from apfdbg.machine.config import MachineConfig
from apfdbg.machine.image import load_image
from apfdbg.machine.machine import Machine

# gdb's i386_gdbarch_init insists on these, in this order, in org.gnu.gdb.i386.core
AMD64_CORE = ("rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip eflags cs ss ds es fs gs "
              "st0 st1 st2 st3 st4 st5 st6 st7 fctrl fstat ftag fiseg fioff foseg fooff fop").split()


def test_target_xml_is_well_formed_with_gdbs_features_in_order():
    root = ET.fromstring(t.TARGET_XML.split(b"\n", 2)[2])  # past the XML and DOCTYPE lines
    assert root.findtext("architecture") == "i386:x86-64"
    features = {f.get("name"): [r.get("name") for r in f.findall("reg")] for f in root.findall("feature")}
    assert features["org.gnu.gdb.i386.core"] == AMD64_CORE
    assert features["org.gnu.gdb.i386.sse"] == [f"xmm{i}" for i in range(16)] + ["mxcsr"]
    assert features["org.gnu.gdb.i386.segments"] == ["fs_base", "gs_base"]
    assert {"cr0", "cr2", "cr3", "cr4", "efer"} <= set(features["org.apfdbg.x86.sys"])
    # every type a register uses is built in or defined in the document
    defined = {e.get("id") for e in root.iter() if e.tag in ("flags", "vector", "union")}
    builtin = {"int", "int32", "int64", "data_ptr", "code_ptr", "i387_ext", "uint128"}
    for reg in root.iter("reg"):
        assert reg.get("type") in defined | builtin, reg.get("name")
    # the document order is the g packet order
    assert [r.get("name") for r in root.iter("reg")] == [r.name for r in t.REGISTERS]


def test_g_block_size_is_the_sum_of_register_sizes():
    assert t.G_SIZE == sum(int(r.get("bitsize")) // 8 for r in
                           ET.fromstring(t.TARGET_XML.split(b"\n", 2)[2]).iter("reg"))


@pytest.fixture
def vcpu(guest):
    m = Machine(load_image(guest("machine/hello")), MachineConfig(vcpus=2))
    yield m.vcpus[1]
    m.close()


def test_registers_read_the_start_state(vcpu):
    raw = t.read_all(vcpu)
    assert len(raw) == t.G_SIZE

    def reg(name):
        return int.from_bytes(t.read_register(vcpu, t.BY_NAME[name]), "little")
    assert reg("rip") == vcpu.machine.image.entry
    assert reg("rdi") == 1 and reg("rsi") == 2          # vCPU index, vCPU count (guest ABI)
    assert reg("rsp") == 0x12000
    assert reg("cs") == 0x08 and reg("ss") == 0x10
    assert reg("efer") & 0x500 == 0x500                 # LME, LMA
    assert reg("cr0") & 1 == 1


def test_write_register_and_read_only_registers(vcpu):
    n = t.BY_NAME["rax"]
    t.write_register(vcpu, n, (0x1122334455667788).to_bytes(8, "little"))
    assert vcpu.reg(X.UC_X86_REG_RAX) == 0x1122334455667788
    t.write_register(vcpu, t.BY_NAME["xmm3"], bytes(range(16)))
    assert t.read_register(vcpu, t.BY_NAME["xmm3"]) == bytes(range(16))
    t.write_register(vcpu, t.BY_NAME["st2"], bytes(range(10)))
    assert t.read_register(vcpu, t.BY_NAME["st2"]) == bytes(range(10))
    cs = t.BY_NAME["cs"]
    t.write_register(vcpu, cs, t.read_register(vcpu, cs))  # same value: accepted
    with pytest.raises(t.ReadOnlyRegister):
        t.write_register(vcpu, cs, (0x23).to_bytes(4, "little"))
    with pytest.raises(ValueError):
        t.write_register(vcpu, n, b"\x00" * 3)


def test_write_all_is_all_or_nothing(vcpu):
    raw = bytearray(t.read_all(vcpu))
    off = {r.name: sum(x.size for x in t.REGISTERS[:i]) for i, r in enumerate(t.REGISTERS)}
    raw[off["rbx"]:off["rbx"] + 8] = (7).to_bytes(8, "little")
    raw[off["cr3"]:off["cr3"] + 8] = (0x5000).to_bytes(8, "little")  # read-only: refused
    with pytest.raises(t.ReadOnlyRegister):
        t.write_all(vcpu, bytes(raw))
    assert vcpu.reg(X.UC_X86_REG_RBX) == 0
    raw[off["cr3"]:off["cr3"] + 8] = t.read_register(vcpu, t.BY_NAME["cr3"])
    t.write_all(vcpu, bytes(raw))
    assert vcpu.reg(X.UC_X86_REG_RBX) == 7
    t.write_all(vcpu, bytes(raw[:off["rip"]]))  # a prefix (an older gdb's shorter block)
    with pytest.raises(ValueError):
        t.write_all(vcpu, bytes(raw[:off["rip"] + 3]))
    with pytest.raises(ValueError):
        t.write_all(vcpu, bytes(raw) + b"\0")
