"""Pure, I/O-free protocol core of mterelay.

Nothing in this package imports the reactor, touches the network or logs:
it turns bytes into bytes (or typed errors) so that the web layer, the
client and the test vectors all share one implementation.  The wire format
is specified in ``docs/protocol.md``.
"""
