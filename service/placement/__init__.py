"""`actionmesh plan`: stage boundaries and node placement from a node inventory."""
