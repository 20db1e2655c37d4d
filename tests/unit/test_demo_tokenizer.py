"""The demo's tokenizer gives every word of its corpus one piece, so the policy's samples are sequences
of whole words: with 384 pieces (256 of them byte fallback) most words were spelled in letters, and the
trained policy's samples held broken words ("orat", "bl�")."""

import sentencepiece

from megatron_bond.demo.task import corpus, train_tokenizer


def test_every_corpus_word_is_one_piece(tmp_path):
    texts = corpus(4000, 0)
    train_tokenizer(texts, tmp_path / "tokenizer.model")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    for text in texts[:500]:
        words, pieces = text.split(), sp.encode_as_pieces(text)
        assert len(pieces) == len(words), (text, pieces)
        # a sentence's first word has no leading space (add_dummy_prefix=False), every other one has "▁"
        assert [p.lstrip("▁") for p in pieces] == words, (text, pieces)
