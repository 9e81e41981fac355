"""Simulated robots driving a real cluster, the in-process references, fault injection and the
invariants their answers must meet: the chaos suite (`actionmesh chaos`, docs/chaos.md)."""
