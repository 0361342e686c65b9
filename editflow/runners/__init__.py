"""Runners: plain-Python stages, looped in-process (`local`) or spread by Ray Data (`ray`)."""
