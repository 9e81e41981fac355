"""The shard process: serves one pipeline stage, holds no session state."""
