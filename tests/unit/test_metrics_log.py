"""Rank 0's progress: a tqdm bar on a terminal, newline-terminated lines in a log file (Slurm's job log,
a pipe), and a non-finite metric (null in metrics.jsonl) shown as "nan" by both instead of a TypeError."""

import io
import json
import math

import pytest

from megatron_bond.config import load_config
from megatron_bond.train.metrics import MetricsLog

STEP = {"loss": 0.5, "reward/policy": 1.25, "kl/anchor": 0.01, "time/rollout": 0.1, "time/score": 0.2, "time/train": 0.3}
EVAL = {"eval": True, "quantile/ref": 0.6, "kl/ref": 0.02, "reward/policy": 1.5}


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _log(tmp_path, *overrides):
    cfg = load_config("recipes/tiny_cpu.yaml", ["logging.wandb_mode=disabled", "train.steps=5", *overrides])
    return MetricsLog(cfg, tmp_path, rank=0, start_step=0)


@pytest.mark.parametrize("terminal", [True, False])
def test_a_nan_metric_is_shown_as_nan(tmp_path, monkeypatch, capsys, terminal):
    """One NaN weight made the loss NaN, which crashed the bar's format (None with :.3g)."""
    if terminal:
        monkeypatch.setattr("sys.stderr", _Terminal())
    log = _log(tmp_path, "logging.log_every=1")
    log.log({"step": 0, **EVAL, "quantile/ref": math.nan})
    log.log({"step": 1, **STEP, "loss": math.nan, "kl/anchor": math.inf})
    log.close()
    shown = capsys.readouterr().out + (log.bar.fp.getvalue() if terminal else "")
    assert "quantile/ref nan" in shown and "loss nan" in shown and "kl_anchor nan" in shown
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["loss"] is None and rows[0]["quantile/ref"] is None


def test_without_a_terminal_lines_every_log_every_steps_and_each_evaluation(tmp_path, capsys):
    log = _log(tmp_path, "logging.log_every=2")
    assert log.bar is None
    log.log({"step": 0, **EVAL})
    for step in range(1, 6):
        log.log({"step": step, **STEP})
    log.close()
    assert capsys.readouterr().out.splitlines() == [
        "eval step 0: quantile/ref 0.600  kl/ref 0.0200  reward/policy 1.5000",
        *(f"step {n}/5: loss 0.5, reward 1.25, kl_anchor 0.01 | rollout 0.10s score 0.20s train 0.30s" for n in (2, 4, 5)),
    ]


def test_on_a_terminal_the_bar_names_the_phase(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr", _Terminal())
    log = _log(tmp_path)
    log.show_phase("rollout")
    log.log({"step": 1, **STEP})
    log.bar.refresh()
    shown = log.bar.fp.getvalue()
    log.close()
    assert "tiny-cpu [rollout]" in shown and "| rollout 0.10s score 0.20s train 0.30s" in shown
    assert capsys.readouterr().out == ""


def test_progress_off_prints_nothing(tmp_path, capsys):
    log = _log(tmp_path, "logging.progress=false", "logging.log_every=1")
    log.log({"step": 1, **STEP})
    log.close()
    assert capsys.readouterr().out == ""


def test_a_start_from_step_0_rewrites_the_rows_of_a_crashed_first_attempt(tmp_path):
    """A crash before the first checkpoint left eval step 0 (and step 1): the restart logged step 0 twice."""
    rows = [{"step": 0, "eval": True}, {"step": 1}, {"step": 2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    MetricsLog._truncate_after(tmp_path / "metrics.jsonl", 0)
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    MetricsLog._truncate_after(tmp_path / "metrics.jsonl", 1)  # resumed from step 1's checkpoint
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_wandb_online_without_a_login_or_a_server_is_one_line_before_any_model(tmp_path, monkeypatch):
    from megatron_bond.config import ConfigError
    from megatron_bond.train.metrics import check_wandb_online

    online = load_config(None, ["logging.wandb_mode=online"])
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ConfigError, match="no wandb login for 127.0.0.1 .*: set WANDB_API_KEY, run `wandb login`, or use "
                                          "logging.wandb_mode=offline"):
        check_wandb_online(online)
    monkeypatch.setenv("WANDB_API_KEY", "k")
    with pytest.raises(ConfigError, match="cannot reach 127.0.0.1:9 .*: use logging.wandb_mode=offline"):
        check_wandb_online(online)
    check_wandb_online(load_config(None, ["logging.wandb_mode=offline"]))  # nothing to check
