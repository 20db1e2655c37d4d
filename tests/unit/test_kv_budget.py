"""The KV budget (rollout.max_kv_tokens): samples drawn in waves that each fit it, joined in order; the
planner counts a wave's KV cache, and packing's token budget instead of rows × the longest row."""

import re

import pytest

from megatron_bond.config import ConfigError, load_config
from megatron_bond.memory import Allocation, activation_bytes, kv_cache_bytes, plan
from megatron_bond.resolve import resolve_config
from megatron_bond.config.validate import samples_per_wave
from megatron_bond.rollout.engine import sample_in_waves
from megatron_bond.rollout.rollouts import Rollouts, Version

V = Version("reference", 0)


class CountingEngine:
    """Sample j of prompt i in a call seeded s is (i, j, s); records each call's sample count."""

    def __init__(self):
        self.calls = []

    def sample(self, role, prompts, n, params, seed_parts, first_index):
        self.calls.append((n, seed_parts))
        return Rollouts(V, [[[i, j, hash(seed_parts)] for j in range(n)] for i in range(len(prompts))],
                        [[[0.0] * 3 for _ in range(n)] for _ in prompts], 1.0, 10 * n, 9 * n)


def test_waves_hold_at_most_the_budget_and_join_in_order():
    engine = CountingEngine()
    out = sample_in_waves(engine, "reference", [[1], [2]], 7, None, ("s", "eval"), 0, per_wave=3)
    assert [n for n, _ in engine.calls] == [3, 3, 1]
    assert len({seed for _, seed in engine.calls}) == 3  # each wave its own draw
    assert [len(rs) for rs in out.responses] == [7, 7]
    assert [r[:2] for r in out.responses[1]] == [[1, j] for j in (0, 1, 2, 0, 1, 2, 0)]
    assert (out.seconds, out.computed, out.useful, out.version) == (3.0, 70, 63, V)


def test_one_wave_is_the_plain_call():
    """A budget that holds every sample changes nothing: the same call, the same seed parts."""
    engine = CountingEngine()
    sample_in_waves(engine, "reference", [[1]], 4, None, ("s", "eval"), 0, per_wave=4)
    sample_in_waves(engine, "reference", [[1]], 4, None, ("s", "eval"), 0, per_wave=None)
    assert engine.calls == [(4, ("s", "eval"))] * 2


def _cfg(*overrides):
    return resolve_config(load_config("recipes/jbond_gemma2_9b.yaml", ["policy.ckpt=null", "reward.ckpt=null",
                                                                       *overrides]), on_gpu=True)


def test_the_planner_counts_one_wave_of_kv_cache():
    """16 prompts × 64 reference samples at once against waves of 4 samples each (16 × 4 × 1024 tokens)."""
    base = ["train.eval_ref_samples=64", "data.max_prompt_tokens=512", "rollout.max_new_tokens=512",
            "rollout.max_kv_tokens=null"]  # the recipe's own budget off: all samples at once
    whole, waved = _cfg(*base), _cfg(*base, f"rollout.max_kv_tokens={16 * 4 * 1024}")
    assert samples_per_wave(whole) is None and samples_per_wave(waved) == 4
    alloc = Allocation(nodes=2, gpus_per_node=8)
    m, layers = whole.model, whole.model.num_layers // whole.parallel.pp
    for cfg, n in ((whole, 16 * 64), (waved, 16 * 4)):
        kv = plan(cfg, alloc).phases["eval"][f"KV cache, {n} sequences (π_ref's k samples)"]
        assert kv == kv_cache_bytes(m, cfg.parallel.tp, layers, n, 1024)


def test_the_planner_counts_packs_of_the_token_budget():
    """Packed, a training microbatch is one row of at most max_tokens_per_microbatch positions."""
    cfg = _cfg("train.packing=true", "train.max_tokens_per_microbatch=8192", "data.max_prompt_tokens=2048",
               "rollout.max_new_tokens=2048", "parallel.recompute=none")  # every layer's activations kept
    pl = plan(cfg, Allocation(nodes=2, gpus_per_node=8))
    key = next(k for k in pl.phases["train"] if k.startswith("training activations"))
    inflight = int(key.rsplit("× ", 1)[1].split()[0])
    layers = cfg.model.num_layers // cfg.parallel.pp
    assert cfg.parallel.pp == 1 and inflight == 1
    assert pl.phases["train"][key] == activation_bytes(cfg.model, cfg.parallel.tp, layers, 8192, 1, on_gpu=True)


@pytest.mark.parametrize("overrides, message", [
    (["data.max_prompt_tokens=100", "rollout.max_new_tokens=40"],
     "config: data.max_prompt_tokens: 100 + rollout.max_new_tokens 40 = 140 tokens exceed model.max_seq_length (128)"),
    (["train.packing=true"], "config: train.packing: the gpt family's local attention"),
    (["train.packing=true", "train.max_tokens_per_microbatch=67", "model.family=gemma"],
     "config: train.max_tokens_per_microbatch: 67 tokens hold no row of the recipe's longest (68"),
    (["train.packing=true", "reward.max_tokens_per_microbatch=50", "model.family=gemma"],
     "config: reward.max_tokens_per_microbatch: 50 tokens hold no row"),
    (["rollout.max_kv_tokens=1000"],
     "config: rollout.max_kv_tokens: 1000 tokens hold less than one sample for each of rollout.batch_size (16)"),
])
def test_lengths_and_budgets_that_cannot_hold_a_row_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_config(load_config("recipes/tiny_cpu.yaml", overrides), on_gpu=False)
