"""What is optimised and how: ``optimizer`` and ``bond`` sections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass
class OptimizerConfig:
    """Adam through megatron-core's get_megatron_optimizer; the LR schedule counts optimizer steps."""

    lr: float = 3e-6
    min_lr: float = 0.0
    warmup_steps: int = 100
    decay_style: Literal["constant", "linear", "cosine"] = "constant"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    distributed: Optional[bool] = None  # the distributed optimizer; None: on GPU, off on CPU (unsupported there)


@dataclass
class BondConfig:
    algorithm: Literal["jbond", "bond", "reinforce"] = "jbond"
    beta: float = 0.5  # weight of the backward-KL (RL) side of the Jeffreys divergence
    gamma: float = 0.0  # KL-to-anchor regulariser
    eta: float = 0.02  # EMA anchor rate
    n: int = 2  # Best-of-N of the anchor (BOND); J-BOND uses 2 anchor samples
    k: int = 8  # reference (anchor) samples per prompt for BOND's Monte-Carlo quantiles
    # How the anchor follows the policy: "ema" (J-BOND; rate eta), "swap" (iterative BOND: replaced by
    # the policy every swap_every steps), "fixed" (stays π_ref; REINFORCE always uses it as π_ref);
    # "auto": fixed for reinforce, ema otherwise (resolved before training).
    anchor: Literal["auto", "ema", "swap", "fixed"] = "auto"
    swap_every: int = 50
    beta_rl: float = 0.01  # KL weight of the REINFORCE baseline
