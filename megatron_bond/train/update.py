"""The optimizer update, applied only when the gradient is finite on every rank.

megatron-core's optimizer checks for inf/NaN only under an fp16 loss scale: in bf16 and fp32 it applies
whatever gradient it gets, and a NaN update would reach the weights, the fp32 EMA anchor (fed by the
optimizer's masters) and the next checkpoint. So the step runs the optimizer's own stages (its public
``prepare_grads``, ``get_grad_norm``, ``step_with_ready_grads``) with the check between them, and the LR
scheduler moves only with an applied update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Update:
    applied: bool
    grad_norm: float  # global L2 norm before clipping (fp32 arithmetic, as megatron-core's clipping)
    lr: float  # the learning rate the update used (unchanged on a skipped step)


def apply_update(optimizer, scheduler, clip_grad: float) -> Update:
    """Collective over the world: every rank takes the same decision."""
    # megatron-core's own clipping function, looked up where its optimizers call it (and where, on CPU
    # only, runtime/cpu_shim.py swaps in the same scaling without its CUDA-type assert).
    from megatron.core.optimizer import optimizer as megatron_optimizer

    found_inf = optimizer.prepare_grads()  # grads into the fp32 masters; True only under a loss scale
    # Over the model-parallel group (the distributed optimizer's shards too); grads are already summed
    # over data-parallel ranks, so every replica computes the same norm. inf/NaN anywhere makes it non-finite.
    grad_norm = float(optimizer.get_grad_norm())
    bad = torch.tensor([float(found_inf or not math.isfinite(grad_norm))],
                       device="cuda" if torch.cuda.is_available() else "cpu")
    torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)  # agreed, whatever a rank saw
    if bad.item():
        return Update(False, grad_norm, optimizer.param_groups[0]["lr"])
    scheduler.step(increment=1)  # step t trains at the LR of its t-th applied update
    if clip_grad > 0:
        for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
            params = opt.get_parameters()
            if params:  # one global norm for all, as megatron-core's ChainedOptimizer clips
                megatron_optimizer.clip_grad_by_total_norm_fp32(params, max_norm=clip_grad, total_norm=grad_norm,
                                                                 use_decoupled_grad=False)  # no precision-aware optimizer here
    return Update(bool(optimizer.step_with_ready_grads()), grad_norm, optimizer.param_groups[0]["lr"])


@dataclass
class SkippedUpdates:
    """Updates skipped for a non-finite gradient: the running total (a metric) and the current streak,
    which ends the run at ``limit`` (train.max_skipped_steps). Saved in checkpoints."""

    limit: int
    total: int = 0
    consecutive: int = 0

    def record(self, applied: bool) -> None:
        self.consecutive = 0 if applied else self.consecutive + 1
        self.total += not applied

    @property
    def exhausted(self) -> bool:
        return self.consecutive >= self.limit

    def state_dict(self) -> dict:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.consecutive = state["total"], state["consecutive"]
