"""The simulated host: the KVM async-PF model wired to the machine, and host memory pressure."""
from .pager import AutoPager, Latency
from .kvm import KvmHost, build_machine

__all__ = ["AutoPager", "Latency", "KvmHost", "build_machine"]
