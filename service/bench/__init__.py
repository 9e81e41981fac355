"""Benchmarks and the demo: step latency, degraded modes, failover, the demo run."""
