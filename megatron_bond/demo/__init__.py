"""`make demo`: the J-BOND recipe end to end on a small task built locally (python -m megatron_bond.demo)."""
