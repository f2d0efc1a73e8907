"""Shared test helpers: a real redis-server and cluster, relay processes, in-memory relays,
client harnesses, the browser driver, the on-path rewriter (one home; test modules import from here)."""
