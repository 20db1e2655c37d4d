"""Rank body for the independent-reference gradient test: one trainer step on a converted Gemma 2, and
the same step's loss computed again by transformers (full logits, plain autograd, no fused head, no
Megatron schedule) straight from megatron_bond.bond's loss functions, on the samples the trainer drew."""

from __future__ import annotations

import re

import torch

from megatron_bond.bond import (
    backward_kl_loss,
    forward_kl_loss,
    jbond_loss,
    jbond_reward,
    jeffreys_loss,
    log_quantile_reward,
    reinforce_loss,
)
from megatron_bond.config import load_config
from megatron_bond.runtime import destroy_distributed, init_distributed

STEP_ARGS = ["parallel.tp=1", "train.global_batch_size=4", "parallel.micro_batch_size=2", "rollout.max_new_tokens=4",
             "data.eval_size=2", "train.eval_ref_samples=2", "optimizer.lr=1e-3", "optimizer.warmup_steps=0",
             "optimizer.clip_grad=0", "bond.eta=0.5", "bond.gamma=0.5", "bond.n=2", "bond.k=3", "bond.beta_rl=0.3",
             "reward.function=megatron_bond.train.rewards:tiny_reward", "logging.wandb_mode=disabled",
             "logging.progress=false"]


def _layer(key: str) -> tuple[str, int | None]:
    """A TP=1 table key (decoder.layers.3.x) as the sharded key of the stacked layers and its index."""
    found = re.search(r"\.layers\.(\d+)\.", key)
    return (key.replace(found.group(0), ".layers."), int(found.group(1))) if found else (key, None)


def _megatron_view(full: dict, key: str) -> torch.Tensor:
    sharded, i = _layer(key)
    return full[sharded] if i is None else full[sharded][i]


def _load_into_hf(model, full: dict, cfg) -> None:
    from megatron_bond.convert.gemma import rules_for
    from megatron_bond.convert.mapping import to_hf

    state = {}
    for rule in rules_for(cfg.model):
        for mk, hk in rule.expand(cfg.model.num_layers):
            state.update(zip(hk, to_hf(rule.kind, _megatron_view(full, mk), cfg.model)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)  # tied


def _logp(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    tokens = torch.tensor([prompt + response])
    logits = model(tokens).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1).gather(-1, tokens[0, 1:, None]).squeeze(-1)
    return logp[len(prompt) - 1 :].sum().double()


def reference_loss(algorithm: str, bond, rec, policy, anchor) -> torch.Tensor:
    """The step's loss from bond/'s functions on transformers' log-probs (global batch of P prompts)."""
    from megatron_bond.train.rewards import tiny_reward

    prompts, y, y_anchor = rec["prompts"], rec["policy"], rec["anchor"]
    r = lambda ps, rs: torch.tensor(tiny_reward(ps, rs), dtype=torch.float64)  # noqa: E731
    logp = torch.stack([torch.stack([_logp(policy, p, s) for s in ys]) for p, ys in zip(prompts, y)])
    with torch.no_grad():
        logp_anchor = torch.stack([torch.stack([_logp(anchor, p, s) for s in ys]) for p, ys in zip(prompts, y)])
    r_policy = torch.stack([r([p] * len(ys), ys) for p, ys in zip(prompts, y)])
    if algorithm == "reinforce":
        return reinforce_loss(logp, logp_anchor, r_policy, bond.beta_rl)[0]
    r_anchor = torch.stack([r([p] * len(ys), ys) for p, ys in zip(prompts, y_anchor)])
    n = 2 if algorithm == "jbond" else bond.n
    best = [int(torch.argmax(ra[:n])) for ra in r_anchor]  # the first of ties, as torch.argmax
    logp_best = torch.stack([_logp(policy, p, ya[b]) for p, ya, b in zip(prompts, y_anchor, best)])
    if algorithm == "jbond":
        reward_j = jbond_reward(r_policy[:, 0], r_anchor[:, :2]).double()
        return jbond_loss(logp[:, 0], logp_anchor[:, 0], logp_best, reward_j, bond.beta, bond.gamma)[0]
    log_q = log_quantile_reward(r_policy[:, 0], r_anchor[:, : bond.k], bond.n).double()
    backward, _ = backward_kl_loss(logp[:, 0], logp_anchor[:, 0], log_q)
    return jeffreys_loss(forward_kl_loss(logp_best)[0], backward, bond.beta)


def step_against_transformers(ckpt: str, hf_dir: str, algorithm: str, swap: bool = False) -> dict:
    """Step 1 moves the policy and the anchor apart (lr 1e-3, η = 0.5); step 2 is compared: the trainer's
    gradient (DDP's buffer, unclipped) against transformers' autograd of the bond/ loss on step 2's
    samples, per tensor in the Megatron layout. ``swap``: the wiring mutation that trains the policy's
    own sample with the forward coefficient and the anchor's best with the backward one."""
    import transformers

    import megatron_bond.train.step as step_module
    from megatron_bond.convert.gemma import rules_for
    from megatron_bond.convert.mapping import to_megatron
    from megatron_bond.models.layout import gather_full, params_as_grads
    from megatron_bond.resolve import resolve_config
    from megatron_bond.train.setup import build_trainer

    cfg = resolve_config(load_config("recipes/demo.yaml", [*STEP_ARGS, f"policy.ckpt={ckpt}",
                                                          f"bond.algorithm={algorithm}"]))
    dist = init_distributed(cfg.parallel, seed=cfg.run.seed)
    try:
        t = build_trainer(cfg, dist)
        step_module.train_step(t, 1)
        policy_w, anchor_w = gather_full(t.policy), gather_full(t.anchor.chunks)
        recorded, sample = {}, t.engine.sample

        def recording(role, prompts, n, *args):
            out = sample(role, prompts, n, *args)
            recorded[role], recorded["prompts"] = out.responses, prompts
            return out

        t.engine.sample = recording
        if swap:
            trained = t.algorithm.trained
            t.algorithm.trained = lambda *a: [list(reversed(pair)) for pair in trained(*a)]
        step_module.train_step(t, 2)
        with params_as_grads(t.policy):
            got = gather_full(t.policy)
    finally:
        destroy_distributed()
    models = []
    for weights in (policy_w, anchor_w):
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").float()
        _load_into_hf(model, weights, cfg)
        models.append(model.train(False))
    recorded.setdefault("anchor", [[] for _ in recorded["prompts"]])
    loss = reference_loss(algorithm, cfg.bond, recorded, *models)
    named = dict(models[0].named_parameters())
    grads = dict(zip(named, torch.autograd.grad(loss, list(named.values()), allow_unused=True)))
    out = {}
    for rule in rules_for(cfg.model):
        for mk, hk in rule.expand(cfg.model.num_layers):
            ref = to_megatron(rule.kind, [grads[k] if grads[k] is not None else torch.zeros_like(named[k]) for k in hk],
                              cfg.model)
            out[mk] = (_megatron_view(got, mk), ref.detach())
    return out
