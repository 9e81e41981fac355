"""Routing a stage call: which replica, failing over, discovery at start-up, model versions."""
