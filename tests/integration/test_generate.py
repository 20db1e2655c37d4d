"""Rollouts from converted checkpoints: greedy equals transformers' generate, the sampler's log-probs
equal the scorer's, sampling is reproducible, and the CLI round-trips text through the tokenizer."""

import functools
import json
import shutil

import pytest
import torch

from tests.harness import run_ranks
from tests.integration.hf_models import VOCAB

pytestmark = pytest.mark.distributed

# The sampler's log-probs (full logits, log_softmax) against the scorer's (fused chunked head) for the
# same tokens: the same model, two head implementations, the parity criterion of test_gemma_parity.py
# (measured ≤ 1.1e-6; a token shifted by one position is off by O(1)).
LOGP_TOL = 1e-4

NEW = 32
LAYOUTS = [(1, 1), (2, 1), (1, 2)]
VARIANTS = ["gemma_mqa", "gemma2_gqa", "gemma3_gqa"]


def prompts():
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(2, VOCAB, (n,), generator=gen).tolist() for n in (3, 9, 5)]  # mixed lengths


def hf_greedy(model, prompt):
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW, eos_token_id=None,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def greedy(converted):
    @functools.cache  # one launch of ranks per layout, shared by the tests of that layout
    def get(layout):
        tp, pp = layout
        out = run_ranks("tests.integration.bodies:generate_many", tp * pp,
                        {"ckpts": [str(converted(v)[0] / "ckpt") for v in VARIANTS], "tp": tp, "pp": pp,
                         "prompts": prompts(), "max_new_tokens": NEW, "sampling": {"greedy": True}},
                        timeout=300)[0]
        return dict(zip(VARIANTS, out))

    return get


@pytest.mark.parametrize("layout", LAYOUTS, ids=[f"tp{t}pp{p}" for t, p in LAYOUTS])
@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_equals_transformers_and_logprobs_equal_score(converted, greedy, variant, layout):
    _, model, _, _ = converted(variant)
    got = greedy(layout)[variant]
    assert got["responses"] == [hf_greedy(model, p) for p in prompts()]
    err = max(max(abs(a - b) for a, b in zip(x, y)) for x, y in zip(got["logprobs"], got["scored"]))
    assert err < LOGP_TOL


@pytest.mark.parametrize("layout", [(1, 1), (2, 1), (1, 2)], ids=["tp1", "tp2", "pp2"])
def test_sampling_is_reproducible_and_scored_consistently(converted, layout):
    """Also: 3 samples of each prompt from one prefill (the cache forked into 3 rows, on every stage)
    draw what the prompts repeated 3 times draw, with the same seed: the same tokens, and log-probs
    within the sampler's rounding (the prefill's batch differs, so its logits may round differently)."""
    root, _, _, _ = converted("gemma2_gqa")
    tp, pp = layout
    got = run_ranks("tests.integration.bodies:generate_many", tp * pp,
                    {"ckpts": [str(root / "ckpt")], "tp": tp, "pp": pp, "prompts": prompts(),
                     "max_new_tokens": NEW, "sampling": {"temperature": 1.0}, "seed": 7, "stop_ids": (1,),
                     "repeat": True, "fork": 3}, timeout=240)
    got = [rank[0] for rank in got]
    for rank in got:  # every rank returns the same rollouts, twice
        assert rank["responses"] == rank["again"] == got[0]["responses"]
        (forked, forked_lp), (repeated, repeated_lp) = rank["forked"], rank["repeated"]
        assert forked == repeated and len(forked) == 3 * len(prompts())
        assert len({tuple(r) for r in forked}) > len(prompts())  # the 3 samples of a prompt are not copies
        assert max(abs(a - b) for x, y in zip(forked_lp, repeated_lp) for a, b in zip(x, y)) < LOGP_TOL
    for response in got[0]["responses"]:
        assert 1 <= len(response) <= NEW and 1 not in response[:-1]  # stops at the stop id
    err = max(max(abs(a - b) for a, b in zip(x, y)) for x, y in zip(got[0]["logprobs"], got[0]["scored"]))
    assert err < LOGP_TOL


def test_cli_generates_from_text_with_the_checkpoint_tokenizer(converted, tmp_path):
    import sentencepiece

    root, _, _, _ = converted("gemma_mqa")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "ckpt", ckpt)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the best of {n} samples is better than one sample {n}" for n in range(300)))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=60, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, minloglevel=2,
    )
    shutil.copy(tmp_path / "sp.model", ckpt / "hf" / "tokenizer.model")
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "the best of"}) + "\n" + json.dumps({"tokens": [2, 7, 9]}) + "\n")
    argv = ["generate", "--ckpt", str(ckpt), "--tp", "2", "--input", str(tmp_path / "in.jsonl"),
            "--output", str(tmp_path / "out.jsonl"), "--temperature", "0.8", "--top-p", "0.9",
            "--max-new-tokens", "8", "--seed", "3"]
    assert run_ranks("tests.integration.bodies:cli", 2, {"argv": argv}) == [0, 0]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    assert rows[0]["prompt_tokens"] == [2] + sp.encode("the best of")
    assert rows[1]["prompt_tokens"] == [2, 7, 9]
    for row in rows:
        assert 1 <= len(row["tokens"]) <= 8 and len(row["logprobs"]) == len(row["tokens"])
        assert row["text"] == sp.decode(row["tokens"])
    for n, bad_row in enumerate([{"prompt": "x"}, {"tokens": [5, 10**6]}]):  # no prompt; an id past the vocab
        bad = tmp_path / f"bad{n}.jsonl"
        bad.write_text(json.dumps(bad_row) + "\n")
        argv[argv.index("--input") + 1] = str(bad)
        assert run_ranks("tests.integration.bodies:cli", 1, {"argv": argv[:4] + ["1"] + argv[5:]}) == [2]


def test_generate_stops_at_every_stop_id_of_config_and_generation_config(converted, tmp_path):
    """Stop ids: config.json's eos_token_id ∪ generation_config.json's (Gemma 2/3 instruction-tuned
    releases list <end_of_turn> only there), plus --stop-id. Sampled with a fixed seed (the draws up to a
    stop do not depend on it): the run without them shows which token comes third; with it as
    generation_config's eos the response ends there."""
    root, _, _, _ = converted("gemma_mqa")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "ckpt", ckpt)
    (tmp_path / "in.jsonl").write_text(json.dumps({"tokens": [2, 7, 9]}) + "\n")

    def sampled(*extra):
        argv = ["generate", "--ckpt", str(ckpt), "--input", str(tmp_path / "in.jsonl"), "--output",
                str(tmp_path / "out.jsonl"), "--temperature", "3", "--seed", "5", "--max-new-tokens", "12", *extra]
        assert run_ranks("tests.integration.bodies:cli", 1, {"argv": argv}) == [0]
        return json.loads((tmp_path / "out.jsonl").read_text())["tokens"]

    hf_config = json.loads((ckpt / "hf" / "config.json").read_text())
    (ckpt / "hf" / "config.json").write_text(json.dumps({**hf_config, "eos_token_id": 0}))
    free = sampled()
    stop = next(t for t in free[2:] if t not in free[:2])  # a token first produced at position >= 3
    at = free.index(stop)
    (ckpt / "hf" / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, stop]}))
    assert sampled() == free[: at + 1]
    (ckpt / "hf" / "generation_config.json").unlink()
    extra = free[1]
    assert sampled("--stop-id", str(extra)) == free[: free.index(extra) + 1]  # adds to the checkpoint's eos ids
