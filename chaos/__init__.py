"""Fault injection against a real cluster under load. Filled by the chaos issue."""
