"""A reward served over HTTP(S) (``reward.url``): the reward model, rule or judge runs as its own service.

Protocol (docs/training.md has a 20-line server): POST JSON
``{"prompts": [[int, ...], ...], "responses": [[int, ...], ...]}`` (plus ``"prompt_texts"`` and
``"response_texts"`` when the policy checkpoint has a tokenizer), at most ``reward.batch_size`` responses
a request; the answer is ``{"rewards": [float, ...]}`` in request order.

One rank per model-parallel group (TP × PP ranks, one data-parallel share) sends its share's requests,
``reward.max_concurrency`` at a time, and broadcasts the rewards to its group. Connection errors,
timeouts, 429 and 5xx are retried with exponential backoff (``reward.max_retries`` times, at most
``reward.max_wait_s`` of waiting in all, a 429's Retry-After honoured within it); a 4xx, a body with the
wrong count or a non-finite reward ends the run at once. Every rank agrees on a failure (one all-reduce
per call), so all stop with the same line naming the URL and the last error; no checkpoint is written.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import ssl
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

from megatron_bond.config import ConfigError
from megatron_bond.errors import RunError

BACKOFF_S = 0.5  # the first retry's wait; doubled each time, capped at BACKOFF_CAP_S
BACKOFF_CAP_S = 8.0


class RewardServiceError(RuntimeError):
    pass


class HttpReward:
    def __init__(self, reward, tokenizer=None):
        self.url, self.batch_size = reward.url, reward.batch_size
        self.concurrency, self.timeout = reward.max_concurrency, reward.timeout_s
        self.max_retries, self.max_wait = reward.max_retries, reward.max_wait_s
        self.tokenizer = tokenizer
        self.headers = {"Content-Type": "application/json"}
        if reward.token_env:
            token = os.environ.get(reward.token_env)
            if not token:
                raise ConfigError(f"reward.token_env: the environment variable {reward.token_env} is not set "
                                  f"(the bearer token for {self.url})")
            self.headers["Authorization"] = f"Bearer {token}"

    def __call__(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        dist = torch.distributed.is_initialized()
        group = _model_parallel_group() if dist else None
        leader = not dist or torch.distributed.get_rank(group=group) == 0
        values, error = None, ""
        if leader:
            try:
                values = self.request(prompts, responses)
            except RewardServiceError as err:
                error = f"reward.url {self.url}: {err}"
        if dist:
            error = _agreed_error(error)
        if error:
            raise RunError(error + "; stopped without a checkpoint (the previous one is intact)")
        if dist and torch.distributed.get_world_size(group=group) > 1:
            box = [values]
            torch.distributed.broadcast_object_list(box, src=torch.distributed.get_global_rank(group, 0), group=group)
            values = box[0]
        return torch.tensor(values, dtype=torch.float64)

    def request(self, prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
        """Rewards of all responses, in order: batches of ``batch_size``, ``max_concurrency`` in flight."""
        if not responses:  # an empty data-parallel share of the held-out prompts
            return []
        starts = range(0, len(responses), self.batch_size)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            parts = list(pool.map(lambda s: self._batch(prompts[s : s + self.batch_size],
                                                        responses[s : s + self.batch_size]), starts))
        return [v for part in parts for v in part]

    def _batch(self, prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
        body = {"prompts": prompts, "responses": responses}
        if self.tokenizer is not None:
            body["prompt_texts"] = [self.tokenizer.decode(p) for p in prompts]
            body["response_texts"] = [self.tokenizer.decode(r) for r in responses]
        answer = self._post(json.dumps(body).encode())
        rewards = answer.get("rewards") if isinstance(answer, dict) else None
        if not isinstance(rewards, list) or len(rewards) != len(responses):
            got = f"{len(rewards)} rewards" if isinstance(rewards, list) else f"no \"rewards\" list ({str(answer)[:80]})"
            raise RewardServiceError(f"answered {got} for {len(responses)} responses")
        for i, v in enumerate(rewards):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise RewardServiceError(f"returned {v!r} for response {i} of a batch (tokens {responses[i][:8]}...): "
                                         "rewards must be finite numbers")
        return [float(v) for v in rewards]

    def _post(self, payload: bytes):
        waited, last = 0.0, ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                request = urllib.request.Request(self.url, data=payload, headers=self.headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    text = answer.read()
                try:
                    return json.loads(text)
                except ValueError:
                    raise RewardServiceError(f"answered a body that is not JSON: {text[:80]!r}") from None
            except urllib.error.HTTPError as err:
                detail = err.read()[:120].decode(errors="replace").strip()
                last = f"HTTP {err.code} {err.reason}" + (f": {detail}" if detail else "")
                if err.code != 429 and err.code < 500:
                    raise RewardServiceError(last) from None
                retry_after = _seconds(err.headers.get("Retry-After"))
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:  # refused, reset, timed out, cut short
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
                if isinstance(getattr(err, "reason", err), ssl.SSLCertVerificationError):  # will not heal by waiting
                    raise RewardServiceError(last) from None
            if attempt == self.max_retries:
                break
            delay = min(BACKOFF_CAP_S, BACKOFF_S * 2**attempt) if retry_after is None else retry_after
            delay = min(delay, self.max_wait - waited)
            if delay <= 0:
                break
            time.sleep(delay)
            waited += delay
        raise RewardServiceError(f"no answer after {attempt + 1} attempts and {waited:.1f} s of backoff; last error: {last}")


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _model_parallel_group():
    from megatron.core import parallel_state as ps

    return ps.get_model_parallel_group()


def _agreed_error(error: str) -> str:
    """Every rank learns whether any leader failed, and the first failing rank's message."""
    failed = torch.tensor([1.0 if error else 0.0], device=_device())
    torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
    if not failed.item():
        return ""
    messages = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(messages, error)
    return next(m for m in messages if m)


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
