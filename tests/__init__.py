"""The test suite: tests/unit (no process, no socket) and tests/integration (real processes)."""
