import pytest

from megatron_bond.cli import main
from megatron_bond.config import Config, ConfigError, load_config
from tests.harness import ROOT

RECIPE = "recipes/tiny_cpu.yaml"


def test_recipe_loads_with_dotted_overrides():
    cfg = load_config(RECIPE, ["parallel.tp=2", "optimizer.lr=3e-6", "bond.algorithm=bond", "parallel.vpp=null"])
    assert cfg.parallel.tp == 2 and cfg.optimizer.lr == 3e-6 and cfg.bond.algorithm == "bond"
    assert cfg.parallel.vpp is None
    assert cfg.model.hidden_size == 64  # from the recipe, not the default


def test_int_is_accepted_where_float_is_expected():
    assert load_config(None, ["bond.beta=1"]).bond.beta == 1.0
    assert isinstance(load_config(None, ["bond.beta=1"]).bond.beta, float)


def test_round_trip_through_dict():
    cfg = load_config(RECIPE, ["parallel.pp=2"])
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("parallel.tpp=2", "unknown key 'parallel.tpp' (known: tp, pp, vpp, micro_batch_size, recompute, sequence_parallel, first_stage_layers, last_stage_layers)"),
        ("parallel.tp=two", "parallel.tp: expected int, got 'two'"),
        ("parallel.tp=true", "parallel.tp: expected int, got True"),
        ("bond.algorithm=ppo", "bond.algorithm: 'ppo' is not one of ['jbond', 'bond', 'reinforce']"),
        ("parallel.tp=3", "parallel.tp: tp=3 must divide model.num_attention_heads=4"),
        ("parallel.pp=3", "parallel.pp: pp=3 must divide model.num_layers=2"),
        ("parallel.vpp=2", "parallel.vpp: the interleaved (virtual) pipeline schedule is not supported"),
        ("bond.beta=1.5", "bond.beta: must lie in [0, 1]"),
        ("bond.beta=high", "bond.beta: expected float, got 'high'"),
        ("model=3", "config: model: expected a mapping, got 3"),
        ("tp", "override 'tp' is not of the form key=value"),
        ("optimizer.adam_beta1=1.5", "optimizer.adam_beta1: must lie in [0, 1), got 1.5"),
        ("model.num_layers=-2", "model.num_layers: must be >= 1, got -2"),
        ("model.hidden_size=0", "model.hidden_size: must be >= 1, got 0"),
        ("model.num_attention_heads=0", "model.num_attention_heads: must be >= 1, got 0"),
        ("optimizer.lr=.nan", "optimizer.lr: must be > 0, got nan"),
        ("logging.wandb_mode=on", "logging.wandb_mode: YAML reads on/off/yes/no/true/false as a boolean (True)"),
        ("reward.url=ftp://host/r", "reward.url: 'ftp://host/r' must start with http:// or https://"),
        ("reward.timeout_s=0", "reward.timeout_s: must be > 0, got 0"),
        ("checkpoint.export_hf=true", "checkpoint.export_hf: needs policy.ckpt"),
        ("checkpoint.keep_best=quantile/ref", "checkpoint.keep_best: needs checkpoint.export_hf"),
    ],
)
def test_bad_input_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(RECIPE, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_one_reward_source_and_the_message_names_the_two_given(tmp_path):
    with pytest.raises(ConfigError, match=r"reward: 2 sources are given \(reward.function, reward.url\): one at most"):
        load_config(RECIPE, ["reward.url=http://127.0.0.1:1/r", "reward.function=m:f"])
    (tmp_path / "r.yaml").write_text("reward: {ckpt: a, url: 'http://h/r'}\n")
    with pytest.raises(ConfigError, match=r"\(reward.ckpt, reward.url\)"):
        load_config(tmp_path / "r.yaml")


def test_a_reward_source_on_the_command_line_replaces_the_recipes():
    """The README's command: every shipped recipe names reward.ckpt; reward.url given replaces it."""
    cfg = load_config("recipes/jbond_gemma_7b.yaml", ["reward.url=https://rm.internal/score", "reward.token_env=RM_TOKEN"])
    assert (cfg.reward.ckpt, cfg.reward.function, cfg.reward.url) == (None, None, "https://rm.internal/score")
    assert load_config("recipes/jbond_gemma_7b.yaml", ["reward.function=m:f"]).reward.ckpt is None
    assert load_config("recipes/jbond_gemma_7b.yaml", ["reward.batch_size=4"]).reward.ckpt == "ckpt/gemma-7b-rm"


def test_tilde_deletes_a_key_or_a_section():
    """Hydra's ~key: the recipe's value goes and the schema's default applies (a shipped recipe on
    another checkpoint: ~model, and the checkpoint decides the architecture)."""
    from megatron_bond.config import ModelConfig

    cfg = load_config("recipes/jbond_gemma2_9b.yaml", ["~model"])
    assert cfg.model == ModelConfig()
    assert load_config(RECIPE, ["~model.hidden_size"]).model.hidden_size == ModelConfig().hidden_size
    for key in ("model.nope", "nope.x", ""):
        with pytest.raises(ConfigError, match=f"override ~{key}: the recipe sets no such key to delete"):
            load_config(RECIPE, [f"~{key}"])


def test_a_deleted_model_section_with_a_checkpoint_elsewhere_is_checked_by_train(capsys):
    """A login node without the checkpoint: nothing to check the architecture against (it was refused as
    the schema's tiny default model at tp=8)."""
    assert main(["config", "recipes/jbond_gemma2_9b.yaml", "policy.ckpt=elsewhere/gemma-2-2b", "~model"]) == 0
    assert "policy.ckpt elsewhere/gemma-2-2b not found here: the architecture is checked when train reads it" in capsys.readouterr().err


def test_config_runs_the_checks_train_runs(capsys):
    """`config` accepted rollout.engine=vllm at pp=2, which train and the planner refuse."""
    assert main(["config", RECIPE, "rollout.engine=vllm", "parallel.pp=2"]) == 2
    assert "rollout.engine: vllm runs at pipeline size 1 (got pp=2)" in capsys.readouterr().err
    assert main(["config", "recipes/jbond_gemma_7b.yaml", "--get", "parallel.tp"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "4\n" and "policy.ckpt ckpt/gemma-7b not found here" in captured.err


def test_a_recipe_that_is_not_a_yaml_file_is_one_line(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match="bin.yaml is not UTF-8 text"):
        load_config(tmp_path / "bin.yaml")
    with pytest.raises(ConfigError, match="is a directory: give a YAML file"):
        load_config(tmp_path)


def test_missing_recipe():
    with pytest.raises(ConfigError, match="recipe nope.yaml does not exist"):
        load_config("nope.yaml")


def test_cli_config_prints_resolved_config_and_reports_errors(capsys):
    assert main(["config", RECIPE, "parallel.tp=2"]) == 0
    assert '"tp": 2' in capsys.readouterr().out
    assert main(["config", "parallel.tp=2"]) == 0  # overrides without a recipe
    assert main(["config", RECIPE, "parallel.tp=5"]) == 2
    assert "parallel.tp: tp=5 must divide" in capsys.readouterr().err


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "config" in out and "simulate" in out


def test_cli_simulate_runs_and_writes_history(tmp_path, capsys):
    out = tmp_path / "h.jsonl"
    assert main(["simulate", "--steps", "20", "--output", str(out)]) == 0
    rows = [__import__("json").loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20 and rows[-1]["quantile"] > rows[0]["quantile"]
    assert "Best-of-N KL at this quantile" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_shipped_recipe_loads_and_validates(recipe):
    """Keys, types and values, layout against heads and layers (the cluster recipes' layout against
    their allocation is tests/distributed/test_memory_plan.py's)."""
    cfg = load_config(f"recipes/{recipe}", [])
    assert cfg.validate() is cfg


def test_every_numeric_key_has_a_range():
    """A key added to the schema without a range in config/ranges.py fails here."""
    import dataclasses
    import typing

    from megatron_bond.config.ranges import RANGES

    def numeric(cls, prefix: str) -> set[str]:  # sections nest (model.lora)
        out = set()
        for name, hint in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(hint):
                out |= numeric(hint, f"{prefix}{name}.")
            elif any(a in (int, float) for a in typing.get_args(hint) or (hint,)):
                out.add(f"{prefix}{name}")
        return out

    assert numeric(Config, "") == set(RANGES)


def test_responses_must_leave_room_for_a_prompt_in_the_context(capsys):
    from megatron_bond.resolve import resolve_config

    with pytest.raises(ConfigError, match=r"rollout.max_new_tokens: 128 leaves no room for a prompt in model.max_seq_length \(128\)"):
        resolve_config(load_config(RECIPE, ["rollout.max_new_tokens=128"]), on_gpu=False)
    assert main(["config", RECIPE, "rollout.max_new_tokens=200"]) == 2
    assert "leaves no room for a prompt" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["rollout.engine=vllm"], "rollout.engine: 'vllm' does not take adapters yet: use rollout.engine=native with model.lora"),
    (["parallel.tp=2", "parallel.sequence_parallel=true"], "parallel.sequence_parallel: is not supported with model.lora"),
    (["model.transformer_impl=transformer_engine"], "model.transformer_impl: model.lora runs the local spec"),
], ids=["vllm", "sequence_parallel", "transformer_engine"])
def test_what_lora_does_not_take_yet_is_refused_in_one_line(overrides, message):
    """LoRA with what it does not run yet (the adapters' sequence-parallel reductions, TE's norm-fused linears,
    vLLM's in-memory adapters) is refused at config time, before anything loads; without LoRA each is accepted."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(RECIPE, ["model.lora.rank=4", *overrides])
    load_config(RECIPE, overrides)
