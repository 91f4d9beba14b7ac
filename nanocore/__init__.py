"""nanocore: the control node of a Nano virtualization cluster.

A drop-in replacement for Nano Core 1.4.0, written on Twisted.
"""

__version__ = "0.1.0"

#: The Nano Core version whose behaviour nanocore reproduces.
COMPATIBLE_CORE_VERSION = "1.4.0"
