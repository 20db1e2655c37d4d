"""An enumerable transformer task: a small autoregressive transformer policy (plain torch) on prompts of
3 tokens, responses of 4 tokens over a vocabulary of 8 (4,096 responses a prompt), a fixed random
continuous reward on (prompt, response), and π_ref pre-trained on a peaked prompt-conditioned teacher.
On held-out prompts every quantity is exact by enumeration (``fronts.py``); training draws samples and
goes through the project's algorithm objects (``algorithms.py``), as train/step.py does.

Dtypes: the transformer runs in float32 (as a trained policy would); its enumerated log-probs are cast
to float64 before any sum over the 4,096 responses (fronts.py says why); the algorithm objects get
float64 sequence quantities (GlobalBatch's contract).
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .algorithms import Algorithm, GlobalBatch
from .fronts import point, ref_quantiles
from .losses import ema_update_

VOCAB, PROMPT_LEN, RESPONSE_LEN = 8, 3, 4
RESPONSES = torch.tensor(list(itertools.product(range(VOCAB), repeat=RESPONSE_LEN)))  # [4096, 4], index order


class Block(nn.Module):
    """Pre-norm attention and MLP; ``forward`` attends to cached keys/values of earlier positions."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, h: Tensor, past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """h [B, T, d] at the positions after ``past``'s (keys, values [B, heads, S, d/heads]); causal
        within h. Returns the output and the keys/values up to here."""
        b, t, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        s = k.shape[2]
        causal = torch.ones(t, s, dtype=torch.bool).tril(s - t)
        att = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal)
        h = h + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return h + self.mlp(self.norm2(h)), (k, v)


class Policy(nn.Module):
    """Causal transformer over prompt + response tokens: 2 layers, d = 32, 4 heads (d = 64 costs 3× the
    CPU time of an evaluation for no change in what the task tests)."""

    def __init__(self, d: int = 32, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Embedding(PROMPT_LEN + RESPONSE_LEN, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)

    def _run(self, tokens: Tensor, start: int, past: list | None) -> tuple[Tensor, list]:
        """The next-token logits at each of ``tokens`` [B, T] (positions start..start+T−1), float32, and the
        new cache."""
        h = self.tok(tokens) + self.pos.weight[start:start + tokens.shape[1]]
        cache = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, past[i] if past else None)
            cache.append(kv)
        return self.head(self.norm(h)), cache

    def next_logp(self, prompts: Tensor, responses: Tensor) -> Tensor:
        """log π(· | prompt, response[:t]) for t = 0..T: [B, T+1, V] from [B, 3], [B, T]."""
        logits, _ = self._run(torch.cat([prompts, responses], dim=1), 0, None)
        return torch.log_softmax(logits[:, PROMPT_LEN - 1:], dim=-1)

    def logp(self, prompts: Tensor, responses: Tensor) -> Tensor:
        """Sequence log-probs [B] of full responses [B, 4]."""
        lp = self.next_logp(prompts, responses[:, :-1])
        return lp.gather(-1, responses.unsqueeze(-1)).squeeze(-1).sum(-1)

    def enumerate(self, prompts: Tensor) -> Tensor:
        """log π(y | x) of every response (RESPONSES' order) of every prompt: [P, 4096], float64.
        Level by level over the prefix tree, each distinct prefix computed once (8 + 64 + 512 states a
        prompt, not 4,096 × 7), attending to its parent's cached keys and values. Normalised in float64,
        so each prompt's 4,096 probabilities sum to 1 within 1e-12 (float32 softmaxes would leave 1e-7)."""
        p = len(prompts)
        logits, cache = self._run(prompts, 0, None)
        total = torch.log_softmax(logits[:, -1].double(), -1)  # [P, V]: log π of the first token; grows to [P, V**t] over t tokens
        for t in range(RESPONSE_LEN - 1):
            width = VOCAB**t  # prefixes so far; each gets the 8 next tokens
            new = torch.arange(VOCAB).repeat(p * width).view(-1, 1)  # [P·width·8, 1]
            past = [(k.repeat_interleave(VOCAB, 0), v.repeat_interleave(VOCAB, 0)) for k, v in cache]
            logits, cache = self._run(new, PROMPT_LEN + t, past)
            step = torch.log_softmax(logits[:, -1].double(), -1).view(p, width * VOCAB, VOCAB)
            total = (total.unsqueeze(-1) + step).view(p, -1)
        return total

    @torch.no_grad()
    def sample(self, prompts: Tensor, n: int, gen: torch.Generator) -> Tensor:
        """n responses a prompt, token by token: [P, n, 4]."""
        x = prompts.repeat_interleave(n, 0)
        y = torch.zeros(len(x), 0, dtype=torch.long)
        for _ in range(RESPONSE_LEN):
            probs = self.next_logp(x, y)[:, -1].exp()
            y = torch.cat([y, torch.multinomial(probs, 1, generator=gen)], dim=1)
        return y.view(len(prompts), n, RESPONSE_LEN)


@dataclass
class Reward:
    """A fixed random continuous reward: r(x, y) = tanh(⟨e(x), φ(y)⟩ / 2) with e(x) a sum of random
    per-position prompt-token vectors and φ(y) of response-token and adjacent-pair vectors (the pairs
    couple the positions; the prompt makes the best response prompt-dependent, and held-out prompts
    share the structure the policy learns). Values are distinct with probability 1."""

    prompt_vecs: Tensor  # [3, V, m]
    token_vecs: Tensor  # [4, V, m]
    pair_vecs: Tensor  # [3, V, V, m]

    @classmethod
    def random(cls, seed: int, m: int = 8) -> "Reward":
        g = torch.Generator().manual_seed(seed)
        scale = 1 / math.sqrt(m)
        return cls(torch.randn(PROMPT_LEN, VOCAB, m, generator=g, dtype=torch.float64),
                   torch.randn(RESPONSE_LEN, VOCAB, m, generator=g, dtype=torch.float64) * scale,
                   torch.randn(RESPONSE_LEN - 1, VOCAB, VOCAB, m, generator=g, dtype=torch.float64) * scale)

    def __call__(self, prompts: Tensor, responses: Tensor) -> Tensor:
        """[P, 3] and [P, ..., 4] -> [P, ...] float64."""
        e = self.prompt_vecs[torch.arange(PROMPT_LEN), prompts].sum(-2)  # [P, m]
        t = torch.arange(RESPONSE_LEN)
        phi = self.token_vecs[t, responses].sum(-2) + self.pair_vecs[t[:-1], responses[..., :-1], responses[..., 1:]].sum(-2)
        e = e.view(e.shape[0], *([1] * (phi.dim() - 2)), -1)
        return torch.tanh((e * phi).sum(-1) / 2)

    def table(self, prompts: Tensor) -> Tensor:
        """Every response's reward: [P, 4096]."""
        return self(prompts, RESPONSES.expand(len(prompts), -1, -1))


def all_prompts() -> Tensor:
    return torch.tensor(list(itertools.product(range(VOCAB), repeat=PROMPT_LEN)))  # [512, 3]


@dataclass
class Task:
    ref: Policy
    reward: Reward
    train_prompts: Tensor  # [P_train, 3]
    eval_prompts: Tensor  # [P_eval, 3], held out
    ref_logp: Tensor  # [P_eval, 4096] float64, π_ref's enumeration on eval_prompts
    rewards: Tensor  # [P_eval, 4096] float64
    p_le: Tensor  # [P_eval, 4096] float64, p≤_ref of every response


def pretrain(seed: int, steps: int, teacher_scale: float = 4.0, batch: int = 64, log=None) -> tuple[Policy, float]:
    """π_ref: a fresh policy fitted by maximum likelihood on samples of a teacher (a random policy whose
    logits are scaled by ``teacher_scale``, so it is peaked and prompt-dependent), ``batch`` random
    prompts × 4 samples a step. Returns (π_ref, its exact mean KL(teacher‖π_ref) on 16 prompts)."""
    torch.manual_seed(seed)
    teacher, student = Policy(), Policy()
    with torch.no_grad():
        teacher.head.weight.mul_(teacher_scale)
        teacher.head.bias.mul_(teacher_scale)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    prompts = all_prompts()
    for step in range(steps):
        x = prompts[torch.randint(len(prompts), (batch,), generator=g)].repeat_interleave(4, 0)
        y = teacher.sample(x, 1, g)[:, 0]
        loss = -student.logp(x, y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 200 == 0 or step == steps - 1):
            log(f"pre-training step {step}: NLL {loss.item():.4f}")
    with torch.no_grad():
        x = prompts[torch.randint(len(prompts), (16,), generator=g)]
        t, s = teacher.enumerate(x), student.enumerate(x)
        final = (t.exp() * (t - s)).sum(-1).mean().item()
    return student, final


def build(seed: int = 0, pretrain_steps: int = 200, eval_prompts: int = 16, log=None) -> Task:
    """The task: π_ref pre-trained, the reward, and a fixed split of the 512 prompts (``eval_prompts``
    held out, never trained on)."""
    ref, _ = pretrain(seed, pretrain_steps, log=log)
    ref.requires_grad_(False)
    order = torch.randperm(512, generator=torch.Generator().manual_seed(seed + 1))
    prompts = all_prompts()
    held, train = prompts[order[:eval_prompts]], prompts[order[eval_prompts:]]
    reward = Reward.random(seed + 2)
    with torch.no_grad():
        ref_logp = ref.enumerate(held)
    rewards = reward.table(held)
    return Task(ref, reward, train, held, ref_logp, rewards, ref_quantiles(ref_logp, rewards)[0])


@dataclass
class Arm:
    """One training configuration: the algorithm object and how its anchor moves ("fixed": π_ref;
    "ema" at ``eta``; "swap": replaced by the policy every ``swap_every`` steps)."""

    name: str
    algorithm: Algorithm
    anchor: str
    eta: float = 0.0
    swap_every: int = 0


def evaluate(task: Task, policy: Policy, anchor: Policy | None) -> dict:
    """The exact point of the policy on the held-out prompts, and KL(π‖π_anchor) where the anchor moves."""
    with torch.no_grad():
        logp = policy.enumerate(task.eval_prompts)
        row = point(logp, task.ref_logp, task.rewards, task.p_le)
        if anchor is not None:
            row["kl_anchor"] = (logp.exp() * (logp - anchor.enumerate(task.eval_prompts))).sum(-1).mean().item()
    return row


def train(task: Task, arm: Arm, steps: int, lr: float, batch: int, seed: int, eval_every: int,
          keep_logp: bool = False) -> list[dict]:
    """Adam from π_ref on ``batch`` training prompts a step, the arm's algorithm object giving the
    stop-gradient coefficient of each trained sequence (L = Σ c_i·log π(y_i), as train/step.py builds
    it). Returns the exact evaluation every ``eval_every`` steps (step 0 included); with ``keep_logp``
    each row also holds the policy's enumerated log-probs (for divergences to a target)."""
    policy = copy.deepcopy(task.ref).requires_grad_(True)
    anchor = copy.deepcopy(task.ref)  # π_ref for "fixed"; requires no grad
    algorithm, moving = arm.algorithm, arm.anchor != "fixed"
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            row = {"step": step, **evaluate(task, policy, anchor if moving else None)}
            if keep_logp:
                with torch.no_grad():
                    row["logp"] = policy.enumerate(task.eval_prompts)
            rows.append(row)
        if step == steps:
            return rows
        x = task.train_prompts[torch.randint(len(task.train_prompts), (batch,), generator=gen)]
        y = policy.sample(x, algorithm.policy_samples, gen)  # [B, ps, 4]
        y_anchor = (anchor.sample(x, algorithm.anchor_samples, gen) if algorithm.anchor_samples
                    else torch.zeros(batch, 0, RESPONSE_LEN, dtype=torch.long))
        flat = lambda t: t.reshape(-1, RESPONSE_LEN)  # noqa: E731
        xs = x.repeat_interleave(algorithm.policy_samples, 0)
        with torch.no_grad():
            logp_y = policy.logp(xs, flat(y)).view(batch, -1)
            logp_anchor_y = anchor.logp(xs, flat(y)).view(batch, -1)
        r_anchor = task.reward(x, y_anchor) if algorithm.anchor_samples else torch.zeros(batch, 0, dtype=torch.float64)
        coef, _ = algorithm.coefficients(GlobalBatch(logp_y.double(), logp_anchor_y.double(), task.reward(x, y), r_anchor))
        trained = torch.tensor(algorithm.trained(y.tolist(), y_anchor.tolist(), r_anchor))  # [B, 2, 4]
        per = trained.shape[1]
        logp = policy.logp(x.repeat_interleave(per, 0), flat(trained)).view(batch, per)
        loss = (coef.float() * logp).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if arm.anchor == "ema":
            ema_update_(list(anchor.parameters()), [p.detach() for p in policy.parameters()], arm.eta)
        elif arm.anchor == "swap" and (step + 1) % arm.swap_every == 0:
            anchor.load_state_dict(policy.state_dict())
