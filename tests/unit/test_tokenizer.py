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


def _tokenizer_json(hf, template=None):
    """A tokenizer saved as transformers 5 saves Gemma's: tokenizer.json and tokenizer_config.json only."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", END_OF_TURN, "a",
                                         "turn", "user", "model", "hi"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<start_of_turn>", END_OF_TURN])
    hf.mkdir(parents=True, exist_ok=True)
    tok.save(str(hf / "tokenizer.json"))
    (hf / "config.json").write_text(json.dumps({"eos_token_id": 1, "bos_token_id": 2}))
    (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": template} if template else {}))


def test_a_tokenizer_json_without_tokenizer_model_encodes_text(tmp_path):
    """transformers 5's save_pretrained writes no tokenizer.model: text prompts were refused."""
    _tokenizer_json(tmp_path / "ckpt" / "hf")
    text = load_text_side(tmp_path / "ckpt")
    assert text.encode(["a turn", "hi"], "x") == [[2, 6, 7], [2, 10]]
    assert text.decode([6, 7]) == "a turn" and text.tokenizer.size() == 11
    assert text.stop_ids(chat_template=True) == (1, 5)
    # without a chat_template in tokenizer_config.json: Gemma's turns
    assert text.render_chat([{"role": "user", "content": "hi"}], "x") == "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"


def test_the_chat_template_comes_from_tokenizer_config(tmp_path):
    template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
                "{% endif %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<model>{% endif %}")
    _tokenizer_json(tmp_path / "ckpt" / "hf", template)
    text = load_text_side(tmp_path / "ckpt")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "turn"}]
    assert text.render_chat(messages, "x") == "<user>hi<assistant>a<user>turn<model>"  # BOS is encode's
    with pytest.raises(ConfigError, match="p.jsonl row 3: the checkpoint's chat template refuses these messages"):
        text.render_chat([{"role": "system", "content": "s"}], "p.jsonl row 3")
    with pytest.raises(ConfigError, match="messages must be a non-empty list"):
        text.render_chat([{"role": "user"}], "x")


def test_an_unusable_tokenizer_file_is_one_line(tmp_path):
    _tokenizer_json(tmp_path / "ckpt" / "hf")
    (tmp_path / "ckpt" / "hf" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="tokenizer.json: not a usable tokenizer"):
        load_text_side(tmp_path / "ckpt")
