"""megatron-bond: BOND / J-BOND (Best-of-N Distillation) on megatron-core."""

import warnings

__version__ = "0.1.0"

# Notices of megatron-core and torch that say nothing to a user of the commands (fallbacks megatron-core
# always takes without Transformer Engine / apex on CPU, a deprecation inside its own defaults, and the
# deprecations torch.distributed.checkpoint raises inside megatron-core's loader on every resume). Filtered
# when this package is imported, which every entry point does before megatron-core.
IGNORED_NOTICES = (".*Transformer Engine and Apex are not installed.*", ".*Apex is not installed.*",
                   ".*full scope is deprecated.*", ".*all_gather_into_tensor. is deprecated.*",
                   ".*`load_state_dict` is deprecated and will be removed.*",
                   ".*Please use DTensor instead and we are deprecating ShardedTensor.*")


def silence_notices() -> None:
    for notice in IGNORED_NOTICES:
        warnings.filterwarnings("ignore", message=notice)


silence_notices()
