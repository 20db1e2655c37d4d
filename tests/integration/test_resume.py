"""Checkpoints that resume exactly: `megatron-bond train` killed (kill -9 at a random step, or inside a
checkpoint write), or stopped by SIGUSR1, then started again with the same command, writes the same
metrics.jsonl as a run that was never interrupted (bit for bit on CPU in fp32: every number but the
timings); a checkpoint saved at TP=2 resumes at TP=1 and PP=2."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.distributed.train_bodies import LOSS_DEPTH, TERMS
from tests.harness import ROOT, UNTIMED
from tests.tolerances import assert_reorder_close

pytestmark = pytest.mark.distributed

STEPS = 8
ARGS = ["recipes/tiny_cpu.yaml", f"train.steps={STEPS}", "checkpoint.every=2", "checkpoint.keep_last=2",
        "train.global_batch_size=4", "rollout.max_new_tokens=4", "data.num_prompts=32", "data.eval_size=4",
        "train.eval_ref_samples=2", "train.eval_every=4", "logging.wandb_mode=disabled", "logging.progress=false"]


def _env(extra=None):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(extra or {})}


def _command(out, nproc: int, extra: list[str]) -> list[str]:
    launcher = [sys.executable, "-m", "megatron_bond.cli"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                    "-m", "megatron_bond.cli"]
    return [*launcher, "train", *ARGS, f"run.output_dir={out}", *extra]


def train(out, *extra, nproc: int = 1, env=None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(out, nproc, list(extra)), cwd=ROOT, env=_env(env), capture_output=True,
                          text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def start(out, *extra) -> subprocess.Popen:
    return subprocess.Popen(_command(out, 1, list(extra)), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def wait_for_step(proc, out, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "metrics.jsonl").exists() and any(r["step"] >= step and not r.get("eval") for r in rows(out)):
            return
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    raise TimeoutError(f"step {step} not reached")


def kill_all(proc) -> None:
    """kill -9 of the run and every process it started (torchrun workers and checkpoint writers
    live in sessions of their own)."""
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def latest(out) -> str:
    return (out / "checkpoints" / "latest").read_text().strip()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    train(out)
    assert [r["step"] for r in rows(out) if not r.get("eval")] == list(range(1, STEPS + 1))
    # checkpoint.every=2, keep_last=2: of steps 2, 4, 6, 8 the last two remain, and nothing partial
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_0000006", "step_0000008"]
    return [UNTIMED(r) for r in rows(out)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_step_then_resume_is_exact(reference, tmp_path, seed):
    kill_at = random.Random(seed).randint(3, STEPS - 1)  # after the first checkpoint (step 2) is complete
    proc = start(tmp_path)
    wait_for_step(proc, tmp_path, kill_at)
    kill_all(proc)
    done = train(tmp_path, env={"PYTHONWARNINGS": ""})  # Python's own warning filters, as a user runs it
    assert "resuming from" in done.stdout
    assert "Warning" not in done.stderr, done.stderr[-2000:]  # torch's deprecations inside megatron-core's loader
    assert [UNTIMED(r) for r in rows(tmp_path)] == reference


ASYNC = "checkpoint.async_save=true"
CRASHES = [("after_tensors", "step_0000002", []), ("before_rename", "step_0000002", []),
           ("before_latest", "step_0000002", []), ("after_latest", "step_0000004", []),
           # Async: killed while step 4's writer runs, and inside the completion that runs once it is done.
           # The resume from step 2 is exact only if step 2's writer saved the state of step 2, not the
           # weights that steps 3 and 4 changed while it ran.
           ("async_writing", "step_0000002", [ASYNC]), ("before_latest", "step_0000002", [ASYNC])]


@pytest.mark.parametrize("point,kept,extra", CRASHES, ids=[f"{p}{'-async' if e else ''}" for p, _, e in CRASHES])
def test_crash_inside_a_checkpoint_write_keeps_the_previous_one(reference, tmp_path, point, kept, extra):
    done = train(tmp_path, *extra, env={"MEGATRON_BOND_FAULT": f"4:{point}"}, check=False)
    assert done.returncode == 137, done.stderr[-2000:]
    assert latest(tmp_path) == kept
    train(tmp_path, *extra)
    assert [UNTIMED(r) for r in rows(tmp_path)] == reference
    assert not list((tmp_path / "checkpoints").glob(".*.partial"))


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGINT])
def test_sigusr1_or_ctrl_c_checkpoints_exits_0_and_resumes(reference, tmp_path, signum):
    """Ctrl-C ended in a KeyboardInterrupt traceback and no checkpoint; now it is SIGUSR1's stop. A finished
    run started again says it is complete."""
    proc = start(tmp_path)
    wait_for_step(proc, tmp_path, 3)
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    assert "Traceback" not in proc.stderr.read()
    stopped = int((tmp_path / "PREEMPTED").read_text())
    assert 3 <= stopped < STEPS and latest(tmp_path) == f"step_{stopped:07d}"
    train(tmp_path)
    assert not (tmp_path / "PREEMPTED").exists()
    assert [UNTIMED(r) for r in rows(tmp_path)] == reference
    if signum == signal.SIGINT:
        again = train(tmp_path)
        assert f"is complete: step {STEPS} of train.steps={STEPS}" in again.stdout
        assert [UNTIMED(r) for r in rows(tmp_path)] == reference


def test_resume_at_another_layout(tmp_path):
    """Saved at TP=2 (step 4 of 5), resumed at TP=1 and at PP=2: step 5 equals the TP=2 run's step 5
    within the layout tests' reordering bound (the restored state is bit-identical; only the order of
    the sums of step 5 changes)."""
    five = ["train.steps=5"]
    train(tmp_path / "tp2", *five, "parallel.tp=2", nproc=2)
    (step5,) = [r for r in rows(tmp_path / "tp2") if r["step"] == 5 and not r.get("eval")]
    for name, layout, nproc in (("tp1", [], 1), ("pp2", ["parallel.pp=2"], 2)):
        out = tmp_path / name
        shutil.copytree(tmp_path / "tp2", out)
        shutil.rmtree(out / "checkpoints" / "step_0000005")
        (out / "checkpoints" / "latest").write_text("step_0000004")
        done = train(out, *five, *layout, nproc=nproc)
        assert "another layout" in done.stdout
        (got,) = [r for r in rows(out) if r["step"] == 5 and not r.get("eval")]
        assert got["reward/policy"] == step5["reward/policy"]
        assert_reorder_close(got["loss"], step5["loss"], TERMS, LOSS_DEPTH, f"step 5 loss at {name}")


def test_async_fully_parallel_save_at_dp2_spreads_the_writes_and_resumes_exactly(tmp_path):
    """checkpoint.async_save at DP=2: both data-parallel ranks write a share of the replicated tensors (before,
    DP rank 0 wrote them all and rank 1 nothing), and a resume from step 4 ends with the same rows."""
    five = ["train.steps=5", ASYNC, "parallel.micro_batch_size=4"]
    train(tmp_path / "whole", *five, nproc=2)
    dist = tmp_path / "whole" / "checkpoints" / "step_0000004" / "dist"
    written = [sum(f.stat().st_size for f in dist.glob(f"__{rank}_*.distcp")) for rank in (0, 1)]
    assert min(written) > 0.3 * sum(written), written
    out = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole", out)
    shutil.rmtree(out / "checkpoints" / "step_0000005")
    (out / "checkpoints" / "latest").write_text("step_0000004")
    assert "resuming from" in train(out, *five, nproc=2).stdout
    assert [UNTIMED(r) for r in rows(out)] == [UNTIMED(r) for r in rows(tmp_path / "whole")]


def reward_failing_on_rank_1(prompts, responses):
    """The tiny rule, except that data-parallel rank 1 fails (a bug, or a service down, on one rank)."""
    if os.environ.get("RANK") == "1" and os.environ.get("FAIL_NOW") and len(responses) > 0:
        raise RuntimeError("reward server unreachable (simulated, rank 1)")
    return [sum(r) / (255.0 * len(r)) for r in responses]


def test_a_rank_that_fails_ends_the_whole_job_with_its_error(tmp_path):
    """DP=2, rank 1's reward raises: the job ends (well within the collective timeout, never a hang),
    non-zero, with rank 1's error in the output; rank 0, blocked in a collective, is stopped by torchrun."""
    begin = time.monotonic()
    done = train(tmp_path, "reward.function=tests.integration.test_resume:reward_failing_on_rank_1",
                 "parallel.micro_batch_size=4", nproc=2, env={"FAIL_NOW": "1", "MEGATRON_BOND_TIMEOUT_MINUTES": "30"},
                 check=False)
    assert done.returncode != 0
    assert "reward server unreachable (simulated, rank 1)" in done.stderr
    # A hang would last the 30-minute collective timeout; 240 s leaves room for a slow, busy machine
    assert time.monotonic() - begin < 240, "the job hung after one rank failed"


def test_a_changed_lr_is_refused_on_resume_unless_accepted_and_then_it_applies(tmp_path):
    """A requeue with another optimizer.lr: refused in one line naming the key (the saved scheduler
    would have replaced it without a word); with run.allow_changed=[optimizer.lr] the new lr trains."""
    out = tmp_path / "run"
    const = ["optimizer.warmup_steps=0", "optimizer.decay_style=constant"]
    train(out, *const, "train.steps=4")
    refused = train(out, *const, "train.steps=6", "optimizer.lr=1e-3", check=False)
    assert refused.returncode == 2 and "optimizer.lr: 0.00025 -> 0.001 changed since the run started" in refused.stderr
    done = train(out, *const, "train.steps=6", "optimizer.lr=1e-3", "run.allow_changed=[optimizer.lr]")
    assert "resuming with changes accepted by run.allow_changed: optimizer.lr: 0.00025 -> 0.001" in done.stdout
    lrs = {r["step"]: r["lr"] for r in rows(out) if not r.get("eval")}
    assert [lrs[s] for s in range(1, 7)] == [0.00025] * 4 + [1e-3] * 2


@pytest.mark.parametrize("extra", [[], [ASYNC]], ids=["sync", "async"])
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, extra):
    """A torch CheckpointException traceback with no "No space left" before; the partial directory stayed.
    Async, the failure surfaces when the finished writers are completed, a step or more later."""
    done = train(tmp_path, *extra, env={"MEGATRON_BOND_FAULT": "4:after_tensors:enospc"}, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "step 4: no space left on device while saving a checkpoint" in done.stderr
    assert "latest still names step_0000002" in done.stderr
    assert latest(tmp_path) == "step_0000002" and not list((tmp_path / "checkpoints").glob(".*.partial"))
