"""What a resume may change (megatron_bond/train/resume.py), on checkpoints' config.json / trainer.json
written here: refused changes name the key, allowed ones pass, run.allow_changed accepts, and the policy
and reward checkpoints are compared by fingerprint as well as by path."""

import json

import pytest

from megatron_bond.config import ConfigError, load_config
from megatron_bond.train.resume import fingerprint, resume_changes, run_inputs

RECIPE = "recipes/tiny_cpu.yaml"


def _model_ckpt(path, size=10):
    (path / "model").mkdir(parents=True)
    (path / "megatron_bond.json").write_text("{}")
    (path / "model" / "__0_0.distcp").write_bytes(b"x" * size)
    return path


def _run_ckpt(tmp_path, *overrides):
    cfg = load_config(RECIPE, list(overrides))
    ckpt = tmp_path / "step_0000002"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(cfg.to_dict()))
    (ckpt / "trainer.json").write_text(json.dumps({"inputs": run_inputs(cfg)}))
    return ckpt


@pytest.mark.parametrize("override, key", [
    ("optimizer.lr=1e-4", "optimizer.lr"), ("optimizer.warmup_steps=3", "optimizer.warmup_steps"),
    ("bond.beta=0.3", "bond.beta"), ("data.num_prompts=100", "data.num_prompts"),
    ("train.global_batch_size=32", "train.global_batch_size"), ("model.hidden_size=32", "model.hidden_size"),
    ("reward.function=tests.integration.test_refusals:nan_reward", "reward.function"), ("run.seed=7", "run.seed"),
    ("rollout.max_new_tokens=8", "rollout.max_new_tokens"),
])
def test_a_change_of_what_the_numbers_depend_on_is_refused_naming_the_key(tmp_path, override, key):
    ckpt = _run_ckpt(tmp_path)
    with pytest.raises(ConfigError, match=f"cannot resume from .*: {key}: .* changed since the run started") as err:
        resume_changes(ckpt, load_config(RECIPE, [override]))
    never = key.startswith(("run.seed", "data.", "rollout.max_new_tokens", "model."))  # no acceptance could work
    assert (f"run.allow_changed=[{key}]" in str(err.value)) != never and "\n" not in str(err.value)
    if never:  # the saved prompt order / tensors belong to the old value: refused even when listed
        with pytest.raises(ConfigError, match=key):
            resume_changes(ckpt, load_config(RECIPE, [override, f"run.allow_changed=[{key}]"]))


@pytest.mark.parametrize("override", ["parallel.tp=2", "train.steps=500", "train.eval_every=5", "checkpoint.every=3",
                                      "logging.wandb_mode=disabled", "model.transformer_impl=local",
                                      "train.eval_ref_samples=4", "run.name=again", "optimizer.distributed=false"])
def test_layout_steps_evaluation_checkpoint_and_logging_may_change(tmp_path, override):
    assert resume_changes(_run_ckpt(tmp_path), load_config(RECIPE, [override])) == []


def test_allow_changed_accepts_listed_keys_and_sections(tmp_path):
    ckpt = _run_ckpt(tmp_path)
    got = resume_changes(ckpt, load_config(RECIPE, ["optimizer.lr=1e-4", "optimizer.adam_beta2=0.99",
                                                    "run.allow_changed=[optimizer]"]))
    assert sorted(got) == ["optimizer.adam_beta2: 0.999 -> 0.99", "optimizer.lr: 0.00025 -> 0.0001"]
    with pytest.raises(ConfigError, match="bond.beta"):
        resume_changes(ckpt, load_config(RECIPE, ["bond.beta=0.3", "run.allow_changed=[optimizer.lr]"]))
    with pytest.raises(ConfigError, match="run.allow_changed: 'optimizer.lrr' is not a config key"):
        load_config(RECIPE, ["run.allow_changed=[optimizer.lrr]"])


def test_a_policy_checkpoint_changed_in_place_is_refused_by_its_fingerprint(tmp_path):
    policy = _model_ckpt(tmp_path / "policy")
    before = fingerprint(policy)
    ckpt = _run_ckpt(tmp_path, f"policy.ckpt={policy}")
    cfg = load_config(RECIPE, [f"policy.ckpt={policy}"])
    assert resume_changes(ckpt, cfg) == []
    (policy / "model" / "__0_0.distcp").write_bytes(b"x" * 11)  # re-converted from another model, same path
    assert fingerprint(policy) != before
    with pytest.raises(ConfigError, match="policy.ckpt: 'fingerprint .*' -> 'fingerprint .*' changed"):
        resume_changes(ckpt, cfg)
    moved = _model_ckpt(tmp_path / "moved")
    with pytest.raises(ConfigError, match="policy.ckpt: .*policy' -> .*moved'"):
        resume_changes(ckpt, load_config(RECIPE, [f"policy.ckpt={moved}"]))


def test_more_steps_under_a_decaying_lr_need_acceptance_and_then_rescale_the_schedule(tmp_path):
    """The LR decays over train.steps: a saved schedule would spend added steps at min_lr."""
    ckpt = _run_ckpt(tmp_path, "optimizer.decay_style=cosine")
    with pytest.raises(ConfigError, match="train.steps: 500 -> 800 changed"):
        resume_changes(ckpt, load_config(RECIPE, ["optimizer.decay_style=cosine", "train.steps=800"]))
    assert resume_changes(ckpt, load_config(RECIPE, ["optimizer.decay_style=cosine", "train.steps=800",
                                                     "run.allow_changed=[train.steps]"])) == ["train.steps: 500 -> 800"]
