"""megatron-bond: BOND / J-BOND (Best-of-N Distillation) on megatron-core."""

import warnings

__version__ = "0.1.0"

# Import-time notices of megatron-core that say nothing to a user of the commands (fallbacks it always
# takes without Transformer Engine / apex on CPU, a deprecation inside its own defaults). Filtered when
# this package is imported, which every entry point does before megatron-core.
IGNORED_NOTICES = (".*Transformer Engine and Apex are not installed.*", ".*Apex is not installed.*",
                   ".*full scope is deprecated.*", ".*all_gather_into_tensor. is deprecated.*")


def silence_notices() -> None:
    for notice in IGNORED_NOTICES:
        warnings.filterwarnings("ignore", message=notice)


silence_notices()
