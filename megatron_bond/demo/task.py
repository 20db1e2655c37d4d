"""The demo's task, built locally and deterministically: a corpus of simple sentences, a SentencePiece
tokenizer trained on it, a small Gemma policy trained on the corpus (so its samples read like text),
and a Gemma 2 reward model trained to imitate a readable rule: **colour words per 10 words** (a share,
not a count, so a longer response is not a better one).
Both are saved as Hugging Face checkpoints, as released Gemma weights would be.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
SUBJECTS = ("the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher", "our neighbour",
            "the child", "a farmer", "the painter")
VERBS = ("sees", "likes", "finds", "paints", "carries", "watches", "draws", "buys", "wants", "keeps")
ADJECTIVES = ("happy", "quiet", "bright", "dark", "warm", "cold", "tiny", "huge", "old", "new", "round", "soft")
OBJECTS = ("ball", "house", "tree", "river", "song", "book", "garden", "boat", "star", "hat", "kite", "cup")
PLACES = ("in the park", "near the sea", "at home", "on the hill", "under the bridge", "by the road")


def rule(text: str) -> float:
    """The reward the reward model learns: colour words per 10 words of the text (prompt and response).
    A count would grow with the length; this share does not (×10 keeps the regression targets near 1)."""
    words = text.replace(".", " ").split()
    return 10.0 * sum(word in COLOURS for word in words) / max(1, len(words))


def sentence(rng: random.Random) -> str:
    """Colours are rare (about one sentence in four has one): the policy has room to improve."""
    def describe():
        words = [rng.choice(COLOURS) if rng.random() < 0.15 else rng.choice(ADJECTIVES)]
        if rng.random() < 0.3:
            words.append(rng.choice(ADJECTIVES))
        return " ".join(words)

    parts = [rng.choice(SUBJECTS), rng.choice(VERBS), "a", describe(), rng.choice(OBJECTS)]
    if rng.random() < 0.5:
        parts += ["and", "a", describe(), rng.choice(OBJECTS)]
    return " ".join(parts + [rng.choice(PLACES)]) + " ."


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(n)]


def train_tokenizer(texts: list[str], out: Path, vocab_size: int = 512) -> None:
    """Gemma's layout: pad/eos/bos/unk = 0/1/2/3, byte fallback (256 of the pieces), digits split,
    no normalisation. 512 pieces leave 256 for BPE, enough for every word of the corpus to be one piece
    (test_demo_tokenizer.py): at 384 only 124 were left, 41 of the 71 words were spelled in letters or
    pairs, and the trained policy stitched pieces of different words ("orat", "bl" + a lone byte, which
    decodes to U+FFFD)."""
    import sentencepiece

    out.parent.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(out.with_suffix("")), vocab_size=vocab_size,
        model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=False, minloglevel=2, num_threads=1,
    )


def _gemma_config(kind: str, vocab: int):
    import transformers

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                  pad_token_id=0, eos_token_id=1, bos_token_id=2, torch_dtype="float32")
    if kind == "policy":
        return transformers.GemmaConfig(**common, hidden_activation="gelu_pytorch_tanh")
    return transformers.Gemma2Config(**common, num_labels=1, sliding_window=32, query_pre_attn_scalar=16)


def _batches(rows: list[list[int]], targets: list[float] | None, size: int, gen: torch.Generator):
    order = torch.randperm(len(rows), generator=gen).tolist()
    for start in range(0, len(order) - size + 1, size):
        idx = order[start : start + size]
        width = max(len(rows[i]) for i in idx)
        tokens = torch.zeros(size, width, dtype=torch.long)
        for j, i in enumerate(idx):
            tokens[j, : len(rows[i])] = torch.tensor(rows[i])
        yield tokens, (torch.tensor([targets[i] for i in idx]) if targets is not None else None)


def _fit(model, rows, targets, steps: int, lr: float, seed: int, loss_of, log, what: str) -> None:
    """AdamW over shuffled batches of 32 until ``steps`` steps, logging every 50."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    while step < steps:
        for tokens, y in _batches(rows, targets, 32, gen):
            loss = loss_of(model, tokens, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0 or step == steps:
                log(f"{what} step {step}/{steps}: loss {loss.item():.3f}")
            if step == steps:
                return


def _next_token_loss(model, tokens, _targets):
    return model(input_ids=tokens, attention_mask=(tokens != 0).long(),
                 labels=tokens.masked_fill(tokens == 0, -100)).loss


def _regression_loss(model, tokens, targets):
    pred = model(input_ids=tokens, attention_mask=(tokens != 0).long()).logits.squeeze(-1)
    return torch.nn.functional.mse_loss(pred, targets)


def train_policy(texts: list[str], sp, out: Path, steps: int, seed: int, log) -> None:
    """Next-token prediction on the corpus, so that samples read like its sentences."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.GemmaForCausalLM(_gemma_config("policy", sp.get_piece_size()))
    rows = [[2] + sp.encode(t) + [1] for t in texts]
    _fit(model, rows, None, steps, 3e-3, seed, _next_token_loss, log, "policy pre-training")
    model.save_pretrained(out)


def train_reward_model(texts: list[str], sp, out: Path, steps: int, seed: int, log) -> float:
    """Regression of the rule on the corpus (and on shuffled sentences, so the reward model does not
    rely on grammar); returns the mean absolute error on held-out sentences."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.Gemma2ForSequenceClassification(_gemma_config("reward", sp.get_piece_size()))
    rng = random.Random(seed)
    mixed = texts + [" ".join(rng.sample(t.split(), len(t.split()))) for t in texts[: len(texts) // 2]]
    rows = [[2] + sp.encode(t) for t in mixed]
    targets = [rule(t) for t in mixed]
    held, rows, targets = (rows[:200], targets[:200]), rows[200:], targets[200:]
    _fit(model, rows, targets, steps, 2e-3, seed, _regression_loss, log, "reward model training (mse)")
    with torch.no_grad():
        errors = [abs(model(input_ids=tokens).logits.item() - y.item())
                  for tokens, y in _batches(held[0], held[1], 1, torch.Generator().manual_seed(0))]
    model.save_pretrained(out)
    return sum(errors) / len(errors)


def build(out: Path, seed: int = 0, policy_steps: int = 300, reward_steps: int = 300, log=print) -> dict:
    """Everything the demo trains from: out/hf_policy, out/hf_reward (HF checkpoints with the
    tokenizer), out/prompts.jsonl (the first words of held-out sentences)."""
    import sentencepiece

    texts = corpus(4000, seed)
    train_tokenizer(texts, out / "tokenizer" / "tokenizer.model")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(out / "tokenizer" / "tokenizer.model"))
    train_policy(texts, sp, out / "hf_policy", policy_steps, seed, log)
    mae = train_reward_model(texts, sp, out / "hf_reward", reward_steps, seed + 1, log)
    for d in ("hf_policy", "hf_reward"):
        (out / d / "tokenizer.model").write_bytes((out / "tokenizer" / "tokenizer.model").read_bytes())
    rng = random.Random(seed + 2)
    prompts = [" ".join(sentence(rng).split()[: rng.choice((2, 3, 4))]) for _ in range(600)]
    (out / "prompts.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in prompts))
    return {"reward_model_mae": mae, "vocab": sp.get_piece_size()}
