"""Degraded modes as pure logic: which mode serves a step, and which steps are admitted.

`quality` is the offline quality table, `policy` the degrade policy (FULL, EARLY_EXIT,
FALLBACK or SHED), `admission` admission control and load shedding, `priority` the classes
both share. No gRPC, no clocks read, nothing else of this repository imported.
"""
