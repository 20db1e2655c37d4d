"""The trainer's prompts (megatron_bond/train/data.py): the same prompts read from jsonl, json, parquet and
a saved dataset directory through HF datasets, as text (SentencePiece, optionally in Gemma's user turn)
or token ids; long prompts dropped and counted; the per-epoch order deterministic and resumable."""

import json

import datasets
import pytest
import sentencepiece

from megatron_bond.config import load_config
from megatron_bond.models.tokenizer import TextSide
from megatron_bond.models.tokenizer import gemma_turns
from megatron_bond.train.data import PromptOrder, load_prompts

TEXTS = [f"the best of {n} samples is better than one" + " sample" * (n % 5) for n in range(40)]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp")
    (root / "corpus.txt").write_text("\n".join(TEXTS * 5 + ["<start_of_turn>user model <end_of_turn>"]))
    sentencepiece.SentencePieceTrainer.train(input=str(root / "corpus.txt"), model_prefix=str(root / "sp"),
                                             vocab_size=60, model_type="bpe", pad_id=0, eos_id=1, bos_id=2,
                                             unk_id=3, minloglevel=2)
    return TextSide(sentencepiece.SentencePieceProcessor(model_file=str(root / "sp.model")), bos_id=2, eos_ids=(1,))


def _write(fmt: str, rows: list[dict], root):
    if fmt == "jsonl":
        (root / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return root / "p.jsonl"
    if fmt == "json":
        (root / "p.json").write_text(json.dumps(rows))
        return root / "p.json"
    ds = datasets.Dataset.from_list(rows)
    if fmt == "parquet":
        ds.to_parquet(str(root / "p.parquet"))
        return root / "p.parquet"
    ds.save_to_disk(str(root / "saved"))
    return root / "saved"


def _cfg(path, *extra):
    return load_config("recipes/tiny_cpu.yaml", [f"data.path={path}", "data.eval_size=8", "model.vocab_size=60",
                                                 "data.max_prompt_tokens=14", *extra])


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "saved"])
def test_every_format_gives_the_same_prompts(fmt, text, tmp_path):
    got = load_prompts(_cfg(_write(fmt, [{"text": t} for t in TEXTS], tmp_path)), text)
    ref = load_prompts(_cfg(_write("jsonl", [{"text": t} for t in TEXTS], tmp_path)), text)
    assert (got.train, got.eval, got.dropped) == (ref.train, ref.eval, ref.dropped)
    encoded = [[2] + text.tokenizer.encode(t) for t in TEXTS]
    kept = [e for e in encoded if len(e) <= 14]
    assert got.dropped == len(encoded) - len(kept) > 0  # the long ones, counted
    assert sorted(got.train + got.eval) == sorted(kept) and len(got.eval) == 8


def test_chat_template_wraps_each_prompt_in_a_user_turn(text, tmp_path):
    path = _write("jsonl", [{"text": t} for t in TEXTS], tmp_path)
    got = load_prompts(_cfg(path, "data.chat_template=true", "data.max_prompt_tokens=200"), text)
    want = sorted([2] + text.tokenizer.encode(gemma_turns([{"role": "user", "content": t}])) for t in TEXTS)
    assert sorted(got.train + got.eval) == want


def test_token_ids_are_taken_as_they_are(tmp_path):
    rows = [{"tokens": [2] + [4 + (n + i) % 50 for i in range(1 + n % 9)]} for n in range(30)]
    got = load_prompts(_cfg(_write("parquet", rows, tmp_path), "data.max_prompt_tokens=8"), TextSide(None, 2, (1,)))
    kept = [r["tokens"] for r in rows if len(r["tokens"]) <= 8]
    assert sorted(got.train + got.eval) == sorted(kept) and got.dropped == len(rows) - len(kept)


def test_the_order_is_a_fresh_permutation_per_epoch_and_resumes_across_the_boundary():
    order = PromptOrder(10, seed=3)
    batches = [order.next_batch(4) for _ in range(5)]  # epochs of 2 batches (the last 2 prompts skipped)
    assert sorted(batches[0] + batches[1]) != sorted(range(10)) and len(set(batches[0] + batches[1])) == 8
    assert batches[0] + batches[1] != batches[2] + batches[3]  # epoch 1 is reshuffled
    again = PromptOrder(10, seed=3)
    assert [again.next_batch(4) for _ in range(5)] == batches  # deterministic from the seed
    resumed = PromptOrder(10, seed=3)
    partway = PromptOrder(10, seed=3)
    for _ in range(3):  # into the second epoch
        partway.next_batch(4)
    resumed.load_state_dict(partway.state_dict())
    assert [resumed.next_batch(4) for _ in range(2)] == batches[3:]


def test_conversations_and_empty_texts(text, tmp_path):
    """{"messages": [...]} rows in the chat format; empty "text" rows left out and counted (they trained
    on BOS alone)."""
    rows = [{"messages": [{"role": "user", "content": t}]} for t in TEXTS[:20]] + [{"messages": [{"role": "user", "content": " "}]}]
    got = load_prompts(_cfg(_write("jsonl", rows, tmp_path), "data.max_prompt_tokens=64"), text)
    want = sorted([2] + text.tokenizer.encode(gemma_turns([{"role": "user", "content": t}])) for t in TEXTS[:20])
    kept = sorted(got.train + got.eval)
    assert got.empty == 1 and len(kept) + got.dropped == 20 and kept and all(k in want for k in kept)
    rows = [{"text": t} for t in TEXTS[:20]] + [{"text": ""}, {"text": "  "}]
    got = load_prompts(_cfg(_write("json", rows, tmp_path), "data.max_prompt_tokens=64"), text)
    assert got.empty == 2 and len(got.train) + len(got.eval) == 20 and min(map(len, got.train + got.eval)) > 1
