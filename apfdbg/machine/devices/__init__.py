"""The machine's devices, one module each, behind two small interfaces (`base.py`): a
`PortDevice` claims I/O ports machine-wide, an `MsrDevice` claims MSRs on its own vCPU. The machine
dispatches to whichever device claims an access; a new device is a new module and one line in
`machine.Machine`, not a new branch in the vCPU's exit handling."""
from .base import DeviceFault, MsrDevice, PortDevice

__all__ = ["DeviceFault", "MsrDevice", "PortDevice"]
