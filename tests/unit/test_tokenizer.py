"""A checkpoint's text side (megatron_bond/models/tokenizer.py): stop ids from config.json and
generation_config.json (their union), <end_of_turn> under the chat template, BOS-prefixed encoding."""

import json

import pytest
import sentencepiece

from megatron_bond.config import ConfigError
from megatron_bond.models.tokenizer import END_OF_TURN, TINY_BOS, TINY_EOS, load_text_side
from megatron_bond.train.rewards import TruncatedReward
from megatron_bond.train.samples import truncated


@pytest.fixture()
def ckpt(tmp_path):
    hf = tmp_path / "ckpt" / "hf"
    hf.mkdir(parents=True)
    (tmp_path / "corpus.txt").write_text("\n".join(f"a turn of {n} words ends here" for n in range(200)))
    sentencepiece.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(hf / "tokenizer"), vocab_size=50, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, user_defined_symbols=["<start_of_turn>", END_OF_TURN], minloglevel=2)
    (hf / "config.json").write_text(json.dumps({"eos_token_id": 1, "bos_token_id": 2}))
    (hf / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 7]}))
    return tmp_path / "ckpt"


def test_stop_ids_are_the_union_of_both_files_and_end_of_turn_under_the_chat_template(ckpt):
    text = load_text_side(ckpt)
    eot = text.tokenizer.piece_to_id(END_OF_TURN)
    assert text.eos_ids == (1, 7) and text.bos_id == 2 and eot not in (1, 7, 3)
    assert text.stop_ids() == (1, 7)
    assert text.stop_ids(chat_template=True) == tuple(sorted((1, 7, eot)))
    assert text.stop_ids(extra=(9,)) == (1, 7, 9)
    assert text.encode(["a turn"], "x") == [[2] + text.tokenizer.encode("a turn")]


def test_without_files_the_tiny_vocabulary_and_bad_ids_are_refused(ckpt, tmp_path):
    tiny = load_text_side(None)
    assert (tiny.bos_id, tiny.stop_ids()) == (TINY_BOS, (TINY_EOS,)) and tiny.tokenizer is None
    (ckpt / "hf" / "generation_config.json").write_text(json.dumps({"eos_token_id": "1"}))
    with pytest.raises(ConfigError, match="generation_config.json: eos_token_id must be a token id"):
        load_text_side(ckpt)
    with pytest.raises(ConfigError, match="text prompts need hf/tokenizer.model"):
        tiny.encode(["x"], "prompts.jsonl:1")


def test_responses_cut_at_max_new_tokens_get_the_fixed_reward_and_the_rest_the_source():
    responses = [[5, 6, 1], [5, 6, 7], [5, 1], [5, 6]]  # 3 = max_new_tokens; 1 = stop id
    assert truncated(responses, 3, (1,)) == [False, True, False, False]
    seen = []

    def source(prompts, rs):
        seen.extend(rs)
        import torch

        return torch.tensor([float(len(r)) for r in rs], dtype=torch.float64)

    got = TruncatedReward(source, -1.0, 3, (1,))([[2]] * 4, responses)
    assert got.tolist() == [3.0, -1.0, 2.0, 2.0] and seen == [[5, 6, 1], [5, 1], [5, 6]]
