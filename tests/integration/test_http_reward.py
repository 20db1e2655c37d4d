"""reward.url: a reward service over HTTP (megatron_bond/train/http_reward.py) against a real server on
127.0.0.1 with scripted faults, and a J-BOND run at TP=2 on it that equals the run on the same reward as
a Python function."""

import re
import subprocess
import time

import pytest

from megatron_bond.config import ConfigError, RewardConfig
from megatron_bond.train.http_reward import HttpReward, RewardServiceError
from megatron_bond.train.rewards import tiny_reward
from tests.integration.reward_server import RewardServer
from tests.integration.test_resume import UNTIMED, rows, train

PROMPTS = [[2, 5, 6], [2, 7], [2, 9, 9, 9], [2, 4], [2, 8, 8], [2, 6]]
RESPONSES = [[10, 20], [255], [4, 4, 4], [100, 200, 30], [7], [50, 60]]
WANT = tiny_reward(PROMPTS, RESPONSES)


def _reward(url, **kw):
    return HttpReward(RewardConfig(url=url, **{"batch_size": 2, "max_retries": 3, "max_wait_s": 5.0, **kw}))


@pytest.mark.parametrize("faults", [["503"], ["429"], ["drop"], ["slow:0.3"], ["503", "drop", "503"]],
                         ids=["503-then-ok", "429-retry-after", "dropped-connection", "slow-within-timeout", "three-faults"])
def test_transient_faults_are_retried_and_the_rewards_come_back_in_order(faults):
    with RewardServer(faults) as server:
        got = _reward(server.url, timeout_s=5.0).request(PROMPTS, RESPONSES)
    assert got == WANT
    assert len(server.requests) == 3 + sum(f in ("503", "429", "drop") for f in faults)


class _Letters:
    """A tokenizer's decode for the request's text fields (ids → letters)."""

    def decode(self, ids):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_texts_are_sent_beside_the_tokens_when_there_is_a_tokenizer():
    with RewardServer() as server:
        reward = _reward(server.url)
        reward.tokenizer = _Letters()
        assert reward.request(PROMPTS[:2], RESPONSES[:2]) == WANT[:2]
    (body,) = [r["body"] for r in server.requests]
    assert body == {"prompts": PROMPTS[:2], "responses": RESPONSES[:2], "prompt_texts": ["cfg", "ch"],
                    "response_texts": ["ku", "v"]}


def test_requests_are_batched_and_concurrent():
    with RewardServer() as server:
        got = _reward(server.url, max_concurrency=3).request(PROMPTS, RESPONSES)
    assert got == WANT
    assert [len(r["body"]["responses"]) for r in server.requests] == [2, 2, 2]
    assert server.max_in_flight >= 2  # three requests of 10 ms each, started together


@pytest.mark.parametrize("fault, message", [
    ("400", "HTTP 400 Bad Request"), ("count", "answered 1 rewards for 2 responses"),
    ("nan", "returned nan for response 0"),
])
def test_a_bad_answer_ends_at_once(fault, message):
    with RewardServer([fault]) as server:
        with pytest.raises(RewardServiceError, match=message):
            _reward(server.url).request(PROMPTS, RESPONSES)
    assert len(server.requests) <= 3  # no retries of a 4xx or a bad body (other batches may have been sent)


def test_a_timeout_is_retried_then_gives_up_with_the_last_error():
    with RewardServer(["slow:1.0", "slow:1.0"]) as server:
        start = time.monotonic()
        with pytest.raises(RewardServiceError, match=r"no answer after 2 attempts.*last error: .*timed out"):
            _reward(server.url, batch_size=6, timeout_s=0.3, max_retries=1).request(PROMPTS, RESPONSES)
    assert time.monotonic() - start < 5


def test_a_dead_server_gives_up_within_the_wait_cap():
    with RewardServer() as server:
        url = server.url
    start = time.monotonic()
    with pytest.raises(RewardServiceError, match=r"no answer after .* of backoff; last error: URLError: .*refused"):
        _reward(url, max_retries=10, max_wait_s=1.0).request(PROMPTS, RESPONSES)
    assert time.monotonic() - start < 3  # 0.5 + 0.5 s of backoff, then the cap


def test_the_bearer_token_comes_from_the_named_environment_variable(monkeypatch):
    monkeypatch.setenv("MBOND_TEST_TOKEN", "s3cret")
    with RewardServer(token="s3cret") as server:
        assert _reward(server.url, token_env="MBOND_TEST_TOKEN").request(PROMPTS, RESPONSES) == WANT
        with pytest.raises(RewardServiceError, match="HTTP 401"):
            _reward(server.url).request(PROMPTS, RESPONSES)
    monkeypatch.delenv("MBOND_TEST_TOKEN")
    with pytest.raises(ConfigError, match="MBOND_TEST_TOKEN is not set"):
        _reward("http://127.0.0.1:9/", token_env="MBOND_TEST_TOKEN")


def test_https_with_the_servers_certificate_trusted(tmp_path, monkeypatch):
    """A self-signed certificate for 127.0.0.1 (openssl: .ci/run installs it), trusted through SSL_CERT_FILE
    as a cluster's CA bundle would be; without it the handshake fails, and that is not retried."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with RewardServer(tls=(str(cert), str(key))) as server:
        assert server.url.startswith("https://")
        start = time.monotonic()
        with pytest.raises(RewardServiceError, match="CERTIFICATE_VERIFY_FAILED"):
            _reward(server.url).request(PROMPTS, RESPONSES)
        assert time.monotonic() - start < 0.5  # no backoff (the first retry would wait 0.5 s)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        assert _reward(server.url).request(PROMPTS, RESPONSES) == WANT


def test_a_run_at_tp2_on_the_service_equals_the_run_on_the_function(tmp_path):
    """Every metric but the timings, bit for bit: the service computes tiny_reward of the same tokens."""
    with RewardServer(["503"]) as server:
        train(tmp_path / "http", f"reward.url={server.url}", "reward.batch_size=5", "parallel.tp=2", nproc=2)
    train(tmp_path / "function", "reward.function=megatron_bond.train.rewards:tiny_reward", "parallel.tp=2", nproc=2)
    assert [UNTIMED(r) for r in rows(tmp_path / "http")] == [UNTIMED(r) for r in rows(tmp_path / "function")]
    # One caller for the TP group: every response of the run posted once. Per training step 4 prompts ×
    # (1 policy + 2 anchor samples); per evaluation the 4 held-out policy samples, and π_ref's 4 × 2 once.
    evals = sum(1 for r in rows(tmp_path / "http") if r.get("eval"))
    steps = sum(1 for r in rows(tmp_path / "http") if not r.get("eval"))
    assert sum(len(r["body"]["responses"]) for r in server.requests[1:]) == steps * 4 * 3 + evals * 4 + 4 * 2


def test_a_service_that_dies_mid_run_stops_the_run_in_one_line_and_keeps_the_checkpoint(tmp_path):
    """The server dies at the first request after the step-2 checkpoint; two data-parallel ranks each
    call it, both stop with the same line (exit 2), and the step-2 checkpoint is what `latest` names."""
    out = tmp_path / "run"
    latest = out / "checkpoints" / "latest"
    with RewardServer(die_when=latest.exists) as server:
        done = train(out, f"reward.url={server.url}", "reward.max_retries=2", "reward.max_wait_s=1", "train.steps=4",
                     "checkpoint.every=2", "parallel.micro_batch_size=2", nproc=2, check=False)
    # Each rank that prints before torchrun stops the others says the same line (rank 0 without a prefix).
    lines = {re.sub(r"^megatron-bond: (\[rank \d\] )?", "", line) for line in done.stderr.splitlines()
             if line.startswith("megatron-bond: ")}
    assert done.returncode != 0 and len(lines) == 1, done.stderr[-3000:]
    (line,) = lines
    assert line.startswith(f"reward.url {server.url}: no answer after 3 attempts"), line
    assert "refused" in line and "stopped without a checkpoint" in line, line
    assert latest.read_text().strip() == "step_0000002"
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step")] == ["step_0000002"]
    assert max(r["step"] for r in rows(out)) == 2
