"""The anchor π_anchor (J-BOND's EMA, iterative BOND's swapped copy, REINFORCE's fixed π_ref) and the
reference π_ref, beside the policy.

Which dtype each buffer has, and why:
- ``shadow`` (fp32, one tensor per optimizer master tensor): the EMA θ_a ← (1−η)·θ_a + η·θ moves θ_a by
  η·(θ − θ_a). In bf16 (8 significant bits) that step is below half an ulp of θ_a whenever the policy is
  within about 1/(2^8·η) ≈ 20 % of the anchor at η = 0.02, so a bf16 anchor never moves (measured on a
  policy 1 % away: 0.0 % of the gap closed in 50 steps, against 63.6 % in fp32).
- its source: the optimizer's fp32 master weights (megatron-core's Float16Optimizer keeps one per bf16
  parameter; the distributed optimizer keeps this data-parallel rank's shard of them, and the shadow is
  sharded the same way), else the fp32 parameters themselves.
- the anchor model's weights: the model dtype, which rollouts and scoring run in; rewritten from the
  shadow after every update (an all-reduce over data-parallel ranks assembles the shards).
- π_ref (``ReferenceWeights``): a host copy of the initial weights in the model dtype. Only evaluation
  needs it, and there it is copied into the anchor model and the anchor rewritten from its shadow
  afterwards, so π_ref costs no device memory at any scale.

With LoRA (model.lora) the optimizer holds only the adapters, so the shadow is an fp32 EMA of the
adapter factors A and B (the same rule on the parameters that train; an EMA of the products B·A would be
a full-size matrix of rank up to r·steps, which no adapter can hold). The anchor model's base weights
are the policy's own tensors (``share_base``): policy, anchor and π_ref keep one copy of the base, and
π_ref (``BaseReference``) is the anchor model with its adapters off. With η = 1 (or a swap) the anchor's
factors are the policy's, so the anchor equals the policy exactly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from megatron_bond.bond import ema_update_
from megatron_bond.models.gpt import unwrap
from megatron_bond.models.lora import adapters_off
from megatron_bond.runtime.megatron_compat import flatten, optimizer_masters, unflatten


@dataclass
class _Slot:
    master: Tensor  # fp32: the optimizer's master (or shard of it), or an fp32 parameter
    shadow: Tensor  # fp32, the anchor's EMA state, shaped like ``master``
    param: Tensor  # the anchor model's parameter (model dtype)
    span: slice | None  # the part of the flattened parameter ``master`` covers (None: all of it)

    @property
    def target(self) -> Tensor:
        """Where ``shadow`` is written: the parameter, or this rank's slice of it."""
        return self.param if self.span is None else self.param.view(-1)[self.span]


class Anchor:
    """The anchor model's chunks (same layout as the policy, no gradients) and their fp32 shadow."""

    def __init__(self, chunks: list, policy_chunks: list, optimizer, dp_group=None):
        self.chunks = chunks
        # What the anchor follows: the trainable parameters (all of them, or the adapters under LoRA).
        self.params = [p.data for c in chunks for p in c.parameters() if p.requires_grad]
        names = {id(p): (i, n) for i, c in enumerate(policy_chunks) for n, p in unwrap(c).named_parameters()}
        anchor_params = [dict(c.named_parameters()) for c in chunks]
        self.slots: list[_Slot] = []
        self.sharded = False
        for param, master, span in optimizer_masters(optimizer):
            i, name = names[id(param)]
            self.sharded |= span is not None
            self.slots.append(_Slot(master, master.detach().clone().float(), anchor_params[i][name].data, span))
        covered = sum(s.target.numel() for s in self.slots)
        total = sum(p.numel() for p in self.params)
        if not self.sharded and covered != total:
            raise RuntimeError(f"the optimizer's masters cover {covered} of the anchor's {total} weights")
        self.dp_group = dp_group
        for chunk in chunks:
            chunk.eval()
            chunk.requires_grad_(False)
        self.refresh()

    @torch.no_grad()
    def ema_(self, eta: float) -> None:
        """θ_anchor ← (1−η)·θ_anchor + η·θ_policy, in fp32, then into the anchor model."""
        ema_update_([s.shadow for s in self.slots], [s.master for s in self.slots], eta)
        self.refresh()

    def follow_(self, bond, step: int) -> None:
        """After an applied update, as ``bond.anchor`` says: EMA at rate ``bond.eta`` (J-BOND), the
        policy every ``bond.swap_every`` steps (iterative BOND), or nothing (fixed at π_ref)."""
        if bond.anchor == "ema":
            self.ema_(bond.eta)
        elif bond.anchor == "swap" and step % bond.swap_every == 0:
            self.copy_policy_()

    @torch.no_grad()
    def copy_policy_(self) -> None:
        """Replace the anchor by the policy (iterative BOND's swap)."""
        torch._foreach_copy_([s.shadow for s in self.slots], [s.master.float() for s in self.slots])
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Write the shadow into the anchor model's weights (model dtype)."""
        if self.sharded:  # each rank writes its shards into zeros; the sum over ranks is the whole
            for p in self.params:
                p.zero_()
        for s in self.slots:
            s.target.copy_(s.shadow.view_as(s.target))
        if self.sharded:
            params = self.params
            flat = flatten(params)
            torch.distributed.all_reduce(flat, group=self.dp_group)  # x + 0 is exact in any dtype
            for p, value in zip(params, unflatten(flat, params)):
                p.copy_(value)

    def full_shadows(self) -> list[tuple[Tensor, Tensor]]:
        """(anchor parameter, its whole fp32 shadow) for checkpoints. Collective under the distributed
        optimizer, whose shards are assembled here (an all-reduce of zero-filled fp32 tensors, exact)."""
        if not self.sharded:
            return [(s.param, s.shadow) for s in self.slots]
        params = self.params
        full = {p.data_ptr(): torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params}
        for s in self.slots:
            full[s.param.data_ptr()].view(-1)[s.span] = s.shadow
        tensors = [full[p.data_ptr()] for p in params]
        flat = flatten(tensors)
        torch.distributed.all_reduce(flat, group=self.dp_group)
        return list(zip(params, unflatten(flat, tensors)))

    @torch.no_grad()
    def load_full_shadows(self, pairs: list[tuple[Tensor, Tensor]]) -> None:
        """Restore the shadow from (anchor parameter, whole fp32 tensor) pairs as ``full_shadows()``
        gives them, then the anchor model's weights from it."""
        by_param = {p.data_ptr(): t for p, t in pairs}
        for s in self.slots:
            whole = by_param[s.param.data_ptr()].to(s.shadow.device, torch.float32)
            s.shadow.copy_(whole if s.span is None else whole.view(-1)[s.span])
        self.refresh()


class ReferenceWeights:
    """π_ref: a host copy of the initial weights (model dtype), swapped into the anchor model to sample
    from or score π_ref during evaluation."""

    def __init__(self, anchor: Anchor):
        pin = torch.cuda.is_available()
        self.host = [p.detach().to("cpu", copy=True) for c in anchor.chunks for p in c.parameters()]
        if pin:
            self.host = [t.pin_memory() for t in self.host]

    @contextlib.contextmanager
    def loaded_into(self, anchor: Anchor):
        """Within the block the anchor model is π_ref; afterwards the anchor again (from its shadow)."""
        params = [p.data for c in anchor.chunks for p in c.parameters()]
        with torch.no_grad():
            for p, h in zip(params, self.host):
                p.copy_(h, non_blocking=True)
        try:
            yield anchor.chunks
        finally:
            anchor.refresh()


class BaseReference:
    """π_ref under LoRA: the base model, i.e. the anchor model with its adapters off (nothing copied)."""

    def loaded_into(self, anchor: Anchor):
        return adapters_off(anchor.chunks)
