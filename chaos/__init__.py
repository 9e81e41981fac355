"""Simulated robots driving a real cluster, the in-process references and the invariants their
answers must meet. Fault injection comes with the chaos issue."""
