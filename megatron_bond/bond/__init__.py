"""BOND / J-BOND mathematics: pure torch, no Megatron, no torch.distributed (docs/bond.md)."""

from .best_of_n import (
    bon_expected_quantile,
    bon_kl_upper_bound,
    bon_probs,
    exact_quantiles,
    jeffreys,
    kl,
    log_bon_ratio,
    log_quantile_reward,
    quantiles,
)
from .losses import (
    backward_kl_loss,
    ema_update_,
    forward_kl_loss,
    jbond_loss,
    jbond_reward,
    jeffreys_loss,
    kl_regulariser_loss,
    leave_one_out_baseline,
    policy_gradient_loss,
    reinforce_loss,
)

__all__ = [
    "backward_kl_loss", "bon_expected_quantile", "bon_kl_upper_bound", "bon_probs", "ema_update_",
    "exact_quantiles", "forward_kl_loss", "jbond_loss", "jbond_reward", "jeffreys", "jeffreys_loss",
    "kl", "kl_regulariser_loss", "leave_one_out_baseline", "log_bon_ratio", "log_quantile_reward", "policy_gradient_loss",
    "quantiles", "reinforce_loss",
]
