"""Unit tests: pure logic and in-memory resources (treq.testing, a Clock); no sockets or processes."""
