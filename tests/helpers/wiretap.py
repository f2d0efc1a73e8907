"""The tests' wire tap lives in the package now (``make demo`` uses it too)."""

from mterelay.wiretap import WireTap, hexdump

__all__ = ["WireTap", "hexdump"]
