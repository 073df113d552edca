"""Detect: judge each observation against the forecast its contract's healthy history makes, and open incidents."""
