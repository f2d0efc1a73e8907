"""Tests of the tools: the benchmark harness (bench/) and the fuzz harness (fuzz/)."""
