"""The one home of a checkpoint's text side: its SentencePiece tokenizer, BOS, and the ids that end a
response. Train, `score` and `generate` all read them here, from the ``hf/`` files the converter copies
beside the weights (config.json, generation_config.json, tokenizer.model).

Stop ids are the union of ``eos_token_id`` in config.json and in generation_config.json (either an id
or a list): Gemma 2/3 instruction-tuned releases list ``<end_of_turn>`` (106) only in the latter, and a
rollout that ignored it would run to max_new_tokens after every turn. With Gemma's chat template the
tokenizer's ``<end_of_turn>`` piece ends a response too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from megatron_bond.config import ConfigError

END_OF_TURN = "<end_of_turn>"
# The tiny run's vocabulary has no files: pad/eos/bos/unk = 0/1/2/3, as Gemma's.
TINY_BOS, TINY_EOS = 2, 1


def _ids(value, where: str) -> list[int]:
    values = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ConfigError(f"{where}: eos_token_id must be a token id or a list of them, got {value!r}")
    return values


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


@dataclass(frozen=True)
class TextSide:
    tokenizer: object | None  # sentencepiece.SentencePieceProcessor, or None (token-id prompts only)
    bos_id: int | None
    eos_ids: tuple[int, ...]  # config.json ∪ generation_config.json

    def stop_ids(self, chat_template: bool = False, extra: tuple[int, ...] = ()) -> tuple[int, ...]:
        """What ends a response: the eos ids, <end_of_turn> under the chat template, and ``extra``."""
        ids = set(self.eos_ids) | set(extra)
        if chat_template and self.tokenizer is not None:
            eot = self.tokenizer.piece_to_id(END_OF_TURN)
            if eot != self.tokenizer.unk_id():
                ids.add(eot)
        return tuple(sorted(ids))

    def encode(self, texts: list[str], where: str) -> list[list[int]]:
        """Token ids of each text, BOS first when the checkpoint has one."""
        if self.tokenizer is None:
            raise ConfigError(f"{where}: text prompts need hf/tokenizer.model in the checkpoint")
        prefix = [] if self.bos_id is None else [self.bos_id]
        return [prefix + ids for ids in self.tokenizer.encode(list(texts))]

    def decode(self, ids: list[int]) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode(ids)


def load_text_side(ckpt: str | Path | None) -> TextSide:
    """From a checkpoint's hf/ directory; None: the tiny run's built-in vocabulary."""
    if ckpt is None:
        return TextSide(None, TINY_BOS, (TINY_EOS,))
    hf = Path(ckpt) / "hf"
    config, generation = _json(hf / "config.json"), _json(hf / "generation_config.json")
    eos = _ids(config.get("eos_token_id"), str(hf / "config.json"))
    eos += _ids(generation.get("eos_token_id"), str(hf / "generation_config.json"))
    tokenizer = None
    if (hf / "tokenizer.model").is_file():
        import sentencepiece

        tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(hf / "tokenizer.model"))
    bos = config.get("bos_token_id", generation.get("bos_token_id"))
    return TextSide(tokenizer, bos, tuple(sorted(set(eos))))
