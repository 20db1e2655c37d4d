"""Process groups, Megatron parallel state, seeding, and the CPU shim (the only Megatron patch)."""

from megatron_bond.runtime.distributed import (
    DistEnv,
    DistributedSetupError,
    destroy_distributed,
    init_distributed,
    read_rendezvous,
)

__all__ = ["DistEnv", "DistributedSetupError", "destroy_distributed", "init_distributed", "read_rendezvous"]
