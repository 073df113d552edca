"""Verify: build candidate reverts in a sandbox and re-measure the metric; only a recovery counts."""
