"""The `actionmesh` command and its subcommands (`python -m service.cli` runs it too)."""
