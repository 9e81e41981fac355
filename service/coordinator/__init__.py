"""The coordinator process: serves the session API, drives the stages, commits session state."""
