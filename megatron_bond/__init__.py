"""megatron-bond: BOND / J-BOND (Best-of-N Distillation) on megatron-core."""

__version__ = "0.1.0"
