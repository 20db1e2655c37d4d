"""The memory planner (megatron_bond/memory.py, tools/plan_memory.py) against what is really allocated:
parameter, gradient, optimizer and EMA-shadow bytes equal megatron-core's tensors on every rank of a
tiny Gemma 2 at TP=2×PP=2 (and with LoRA adapters); activations are within 25 % of the bytes autograd saves for backward; and the
tool gives a verdict for every shipped recipe."""

import re
import subprocess
import sys

import pytest

from tests.harness import ROOT, run_ranks

pytestmark = pytest.mark.distributed

# Every cluster recipe, with the nodes its header tells users to sbatch (a recipe added later is picked up)
RECIPES = {p.stem: int(re.search(r"sbatch --nodes=(\d+)", p.read_text()).group(1))
           for p in sorted((ROOT / "recipes").glob("jbond_*.yaml"))}


@pytest.mark.parametrize("tp,pp,overrides", [(1, 1, []), (2, 2, []), (2, 2, ["model.lora.rank=4"])],
                         ids=["tp1", "tp2pp2", "tp2pp2_lora"])
def test_parameter_gradient_and_optimizer_bytes_equal_the_allocation(tp, pp, overrides):
    for rank in run_ranks("tests.distributed.memory_bodies:allocated", tp * pp, {"tp": tp, "pp": pp, "overrides": overrides},
                          timeout=240):
        for item, (measured, planned) in rank.items():
            assert measured == planned, (item, measured, planned)


# 4096 tokens: where the old path's per-(query, key) terms (scores, softmax, mask: 4096² × 4 heads × 9
# bytes per layer, 2.3 GiB for 4 layers) would have been 30 times everything else.
@pytest.mark.parametrize("tp,seq,micro_batch", [(1, 256, 2), (2, 512, 1), (1, 4096, 1)])
def test_activations_within_25_percent_of_what_autograd_saves(tp, seq, micro_batch):
    for rank in run_ranks("tests.distributed.memory_bodies:saved_activations", tp,
                          {"tp": tp, "seq": seq, "micro_batch": micro_batch}, timeout=240):
        assert abs(rank["planned"] - rank["measured"]) <= 0.25 * rank["measured"], rank


@pytest.mark.parametrize("seq,batch", [(64, 8), (4096, 1)])
def test_no_grad_forward_peak_is_within_the_plan(seq, batch):
    """Scoring's and a prefill's forward, at a short length and at 4096 tokens (where [s, s] scores would
    dominate): the peak of live tensor bytes is at most the plan's (one layer's intermediates beside the
    residual stream), plus bookkeeping, and at least a third of it (a plan that counts the right buffers)."""
    (rank,) = run_ranks("tests.distributed.memory_bodies:no_grad_peak", 1, {"seq": seq, "batch": batch}, timeout=240)
    assert rank["measured"] <= rank["planned"] + BOOKKEEPING and rank["planned"] <= 3 * rank["measured"], rank


def test_the_five_gemma_recipes_are_planned():
    assert len(RECIPES) >= 5, RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_shipped_recipe_fits_its_stated_nodes(recipe):
    done = subprocess.run([sys.executable, "tools/plan_memory.py", f"recipes/{recipe}.yaml", "--nodes",
                           str(RECIPES[recipe]), "--gpus-per-node", "8"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "verdict: fits" in done.stdout, done.stdout + done.stderr
    assert f"on {RECIPES[recipe]} × 8" in done.stdout
    largest = re.search(r"largest phase (rollout|scoring|train|eval|checkpoint_save|checkpoint_load): ([\d.]+) GiB "
                        r"of ([\d.]+) GiB usable", done.stdout)
    # A margin for what no plan counts exactly (fragmentation past the planned slack, NCCL's buffers); each
    # recipe's header says why it fits.
    assert float(largest.group(2)) <= 0.9 * float(largest.group(3)), largest.group(0)
    header = (ROOT / "recipes" / f"{recipe}.yaml").read_text()
    assert f"sbatch --nodes={RECIPES[recipe]}" in header and "# Why it fits: " in header


def test_a_batch_that_data_parallel_ranks_cannot_split_is_refused():
    """7B on 3 nodes: DP = 24 / (tp·pp 4) = 6 does not divide 128 prompts, which the trainer would refuse."""
    done = subprocess.run([sys.executable, "tools/plan_memory.py", "recipes/jbond_gemma_7b.yaml", "--nodes", "3",
                           "--gpus-per-node", "8"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "must be divisible by the data-parallel size 6" in done.stderr, done.stderr


def _plan(*args):
    return subprocess.run([sys.executable, "tools/plan_memory.py", "recipes/jbond_gemma2_27b.yaml", "--gpus-per-node", "8",
                           *args], cwd=ROOT, capture_output=True, text=True)


def test_a_plan_that_does_not_fit_names_a_change_that_does():
    """Gemma 2 27B on one node at TP=8, PP=1 does not fit (its largest phase, loading a checkpoint, needs
    ~174 GiB). PP=2 needs 16 GPUs, and on 2 nodes (DP=1: the distributed optimizer shards nothing, the
    anchor's checkpoint copies are whole) it still needs 92 GiB; the fewest GPUs that fit are PP=2 on 4
    nodes, the shipped layout, and that plan fits."""
    done = _plan("--nodes", "1", "parallel.pp=1")
    assert done.returncode == 1 and "does NOT fit; smallest change that fits: parallel.pp=2 on 4 nodes" in done.stdout, done.stdout
    assert _plan("--nodes", "2", "parallel.pp=2").returncode == 1
    assert _plan("--nodes", "4", "parallel.pp=2").returncode == 0


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "--nodes must be >= 1"), (["--nodes", "-1"], "--nodes must be >= 1"),
    (["--nodes", "4", "--gpu-memory-gb", "0"], "--gpu-memory-gb a finite number > 0"),
    (["--nodes", "4", "model.num_attention_heads=0"], "model.num_attention_heads: must be >= 1, got 0"),
    (["--nodes", "1"], "8 ranks (1 × 8) cannot hold tp·pp = 16: the recipe's layout needs a multiple of 2 nodes of 8"),
    (["--nodes", "4", "--cpu", "policy.dtype=bfloat16"], "bfloat16 training needs CUDA"),
])
def test_bad_input_to_the_planner_is_refused_in_one_line(args, message):
    done = _plan(*args)
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_tp_across_nodes_is_planned_with_a_warning():
    done = _plan("--nodes", "4", "parallel.tp=16", "parallel.pp=1")
    assert "warning: tp=16 spans nodes (8 GPUs each)" in done.stdout and "verdict:" in done.stdout, done.stdout + done.stderr


# Bookkeeping no plan itemises: dist_checkpointing gathers its save plans as pickled byte tensors (56 KiB
# measured for this model's ~100 tensors; it grows with the number of tensors, not their size).
BOOKKEEPING = 128 * 2**10


def test_each_phase_peak_of_live_tensors_is_within_the_plan(tmp_path):
    """One step, an evaluation, a checkpoint save and load of a tiny Gemma 2 on CPU, sequences as long as
    the plan assumes: each phase's measured peak of live tensor bytes (above its start) is at most what the
    plan adds for it, plus bookkeeping (the plan's promise: a run that fits the plan fits the GPU), and at
    least a third of it (a plan that counts the right buffers). Why a third and not closer: the plan counts
    every sequence at the configured maximum (the prompts here are 2 to 8 tokens after BOS), and its no-grad
    layer counts the widest chain of intermediates as alive at once. Measured (docs/memory.md): 0.89 to 1.01
    of the plan where it itemises buffers (KV caches, training activations, fc1's halves), 0.49 in scoring."""
    (rank,) = run_ranks("tests.distributed.memory_bodies:phase_peaks", 1, {"out_dir": str(tmp_path)}, timeout=240)
    from megatron_bond.phases import PHASES

    assert set(rank) == set(PHASES), rank
    for phase, r in rank.items():
        assert r["measured"] <= r["planned"] + BOOKKEEPING and r["planned"] <= 3 * r["measured"], (phase, r)
