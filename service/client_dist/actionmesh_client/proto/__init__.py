"""The public session API's protos and their generated code (written by generate.py)."""
