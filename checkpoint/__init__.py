"""Versioned weight snapshots (local flash and S3), verified on load. Filled by the checkpoint issue."""
