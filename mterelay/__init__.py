"""mterelay: an end-to-end payload-encryption relay for HTTP."""

__version__ = "0.1.0.dev0"
