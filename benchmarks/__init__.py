"""Benchmarks: speed measured and printed, never asserted in tests."""
