"""Protos and their generated code. Regenerate with `python -m service.proto.generate`."""
