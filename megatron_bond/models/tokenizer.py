"""The one home of a checkpoint's text side: its tokenizer, BOS, the ids that end a response and the chat
format. Train, `score` and `generate` all read them here, from the ``hf/`` files the converter copies
beside the weights (config.json, generation_config.json, tokenizer.model or tokenizer.json,
tokenizer_config.json); the converter checks them first (``read_text_side``).

The tokenizer is SentencePiece's tokenizer.model where there is one, else tokenizer.json (the `tokenizers`
library): transformers 5 saves Gemma's tokenizer as tokenizer.json only. The chat format is the Jinja
template of tokenizer_config.json's ``chat_template`` where there is one, else Gemma's turns.

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


class SentencePieceText:
    """tokenizer.model. Other attributes are the SentencePieceProcessor's (reward functions given the
    tokenizer were given the processor itself)."""

    def __init__(self, path: Path):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))

    def __getattr__(self, name):
        return getattr(self.__dict__["sp"], name)

    def encode(self, texts):
        return self.sp.encode(texts)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def token_id(self, piece: str) -> int | None:
        i = self.sp.piece_to_id(piece)
        return None if i == self.sp.unk_id() else i

    def size(self) -> int:
        return self.sp.get_piece_size()


class TokenizerJsonText:
    """tokenizer.json through the `tokenizers` library; BOS is added by TextSide, as for SentencePiece."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))

    def __getattr__(self, name):
        return getattr(self.__dict__["tok"], name)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def token_id(self, piece: str) -> int | None:
        return self.tok.token_to_id(piece)

    def size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)


def gemma_turns(messages: list[dict]) -> str:
    """Gemma's chat format (its released template's output), ending with the opened model turn."""
    turns = "".join(f"<start_of_turn>{'model' if m['role'] == 'assistant' else m['role']}\n{m['content']}<end_of_turn>\n"
                    for m in messages)
    return turns + "<start_of_turn>model\n"


@dataclass(frozen=True)
class TextSide:
    tokenizer: object | None  # SentencePieceText or TokenizerJsonText, or None (token-id prompts only)
    bos_id: int | None
    eos_ids: tuple[int, ...]  # config.json ∪ generation_config.json
    chat_template: str | None = None  # tokenizer_config.json's Jinja template; None: gemma_turns

    def stop_ids(self, chat_template: bool = False, extra: tuple[int, ...] = ()) -> tuple[int, ...]:
        """What ends a response: the eos ids, <end_of_turn> under the chat template, and ``extra``."""
        ids = set(self.eos_ids) | set(extra)
        if chat_template and self.tokenizer is not None:
            eot = self.tokenizer.token_id(END_OF_TURN)
            if eot is not None:
                ids.add(eot)
        return tuple(sorted(ids))

    def encode(self, texts: list[str], where: str) -> list[list[int]]:
        """Token ids of each text, BOS first when the checkpoint has one."""
        if self.tokenizer is None:
            raise ConfigError(f"{where}: text prompts need hf/tokenizer.model or hf/tokenizer.json in the checkpoint")
        prefix = [] if self.bos_id is None else [self.bos_id]
        return [prefix + ids for ids in self.tokenizer.encode(list(texts))]

    def decode(self, ids: list[int]) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode(ids)

    def render_chat(self, messages: list[dict], where: str) -> str:
        """A conversation as the prompt text that opens the model's turn (BOS left to encode)."""
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages) or not messages:
            raise ConfigError(f"{where}: messages must be a non-empty list of {{\"role\": str, \"content\": str}}")
        if self.chat_template is None:
            return gemma_turns(messages)
        import jinja2

        def refuse(message):
            raise ConfigError(f"{where}: the checkpoint's chat template refuses these messages ({message})")

        env = jinja2.Environment(undefined=jinja2.StrictUndefined)
        try:
            return env.from_string(self.chat_template).render(messages=messages, add_generation_prompt=True,
                                                              bos_token="", eos_token="", raise_exception=refuse)
        except jinja2.TemplateError as err:
            raise ConfigError(f"{where}: the checkpoint's chat template failed ({err})") from None


def read_text_side(hf: Path) -> TextSide:
    """From Hugging Face files (a checkpoint's hf/, or the converter's input): one line if a tokenizer file
    is there but unusable."""
    config, generation = _json(hf / "config.json"), _json(hf / "generation_config.json")
    eos = _ids(config.get("eos_token_id"), str(hf / "config.json"))
    eos += _ids(generation.get("eos_token_id"), str(hf / "generation_config.json"))
    tokenizer = None
    for name, kind in (("tokenizer.model", SentencePieceText), ("tokenizer.json", TokenizerJsonText)):
        if (hf / name).is_file():
            try:
                tokenizer = kind(hf / name)
            except Exception as err:  # sentencepiece and tokenizers raise their own types
                detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ConfigError(f"{hf / name}: not a usable tokenizer ({detail})") from None
            break
    template = _json(hf / "tokenizer_config.json").get("chat_template")
    if template is not None and not isinstance(template, str):  # a list of named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)} if isinstance(template, list) else {}
        template = named.get("default")
    bos = config.get("bos_token_id", generation.get("bos_token_id"))
    return TextSide(tokenizer, bos, tuple(sorted(set(eos))), template)


def load_text_side(ckpt: str | Path | None) -> TextSide:
    """From a checkpoint's hf/ directory; None: the tiny run's built-in vocabulary."""
    if ckpt is None:
        return TextSide(None, TINY_BOS, (TINY_EOS,))
    return read_text_side(Path(ckpt) / "hf")
