"""What the first multi-GPU job meets before its first step (issue 35), checked on CPU with stubs: the
device vLLM's worker takes, the NCCL environment, the vLLM API the engine calls, its concurrency, and
the refusal of an unverified megatron-core."""

import sys

import pytest
import torch

from megatron_bond.config import ConfigError, load_config
from megatron_bond.rollout import vllm_engine
from megatron_bond.runtime import megatron_compat
from megatron_bond.runtime.distributed import Rendezvous, device_index, nccl_environment
from tests.distributed.vllm_stub_bodies import _LLM, _ModelRunner, fake_vllm


@pytest.mark.parametrize("visible, local_rank, device", [(8, 3, 3), (1, 3, 0), (4, 6, 2)])
def test_vllm_takes_the_trainers_device_under_every_slurm_binding(monkeypatch, visible, local_rank, device):
    """All GPUs visible (--gpus-per-node), one per task (--gpus-per-task=1: CUDA_VISIBLE_DEVICES names one)
    or a share: vLLM's worker takes cuda:LOCAL_RANK, the trainer device_index(local rank)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    rdv = Rendezvous(11, 16, local_rank, "10.0.0.1", 29500, "slurm")
    env = vllm_engine.launcher_environment(rdv, on_gpu=True)
    assert device_index(local_rank) == device
    assert env == {"RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": str(device), "MASTER_ADDR": "10.0.0.1",
                   "MASTER_PORT": "29500"}


def test_nccl_environment_before_any_group():
    env = {}
    assert nccl_environment("vllm", env) == {"NCCL_NVLS_ENABLE": "0", "NCCL_CUMEM_ENABLE": "0"}
    env = {"NCCL_NVLS_ENABLE": "1"}  # what the user exported wins
    nccl_environment("native", env)
    assert env == {"NCCL_NVLS_ENABLE": "1"}


def test_cli_train_sets_nccl_environment_before_the_process_group(monkeypatch, tmp_path):
    """`megatron-bond train` with rollout.engine=vllm: NCCL_CUMEM_ENABLE=0 is in the environment when the
    trainer (which creates the process group) is entered."""
    from megatron_bond import cli
    import megatron_bond.train.loop as loop

    for name in ("NCCL_CUMEM_ENABLE", "NCCL_NVLS_ENABLE"):
        monkeypatch.delenv(name, raising=False)
    seen = {}
    monkeypatch.setattr(loop, "train", lambda cfg: seen.update({k: v for k, v in __import__("os").environ.items()
                                                                 if k.startswith("NCCL_")}))
    assert cli.main(["train", "recipes/tiny_cpu.yaml", "rollout.engine=vllm", f"run.output_dir={tmp_path}"]) == 0
    assert seen == {"NCCL_CUMEM_ENABLE": "0", "NCCL_NVLS_ENABLE": "0"}


def test_vllm_api_is_checked_at_start(monkeypatch):
    for name, module in fake_vllm().items():
        monkeypatch.setitem(sys.modules, name, module)
    vllm_engine.check_vllm_api()  # the signatures it was written against

    class Renamed(_ModelRunner):
        def reload_weights(self, weights=None):  # a release that renamed the argument
            ...

    class NoTags(_LLM):
        def wake_up(self):
            ...

    for llm, runner, said in [(_LLM, Renamed, "GPUModelRunner.reload_weights takes no weights_iterator"),
                              (NoTags, _ModelRunner, "LLM.wake_up takes no tags")]:
        for name, module in fake_vllm(llm, runner).items():
            monkeypatch.setitem(sys.modules, name, module)
        with pytest.raises(ConfigError, match=said):
            vllm_engine.check_vllm_api()


def test_max_num_seqs_from_the_steps_requests_and_kv_memory():
    cfg = load_config("recipes/tiny_cpu.yaml", ["train.global_batch_size=16", "data.eval_size=8",
                                                "train.eval_ref_samples=4", "rollout.max_new_tokens=16",
                                                "data.max_prompt_tokens=48"])
    # J-BOND: 2 anchor samples of each of the replica's 16 / 2 prompts = 16; evaluation 8 / 2 × 4 = 16
    assert vllm_engine.max_num_seqs(cfg, 2, 1e12) == 16
    assert vllm_engine.max_num_seqs(cfg, 1, 1e12) == 32  # 16 × 2 = 32 = 8 × 4
    m = cfg.model
    per_sequence = 2 * m.num_layers * 64 * (m.num_query_groups or m.num_attention_heads) * (
        m.kv_channels or m.hidden_size // m.num_attention_heads) * 4  # K and V, 48 + 16 positions, fp32
    assert vllm_engine.max_num_seqs(cfg, 1, 5.5 * per_sequence) == 5  # what the KV budget holds
    big = load_config("recipes/tiny_cpu.yaml", ["data.eval_size=512", "train.eval_ref_samples=16"])
    assert vllm_engine.max_num_seqs(big, 1, 1e15) == vllm_engine.VLLM_MAX_NUM_SEQS


def test_unverified_megatron_core_is_refused_unless_accepted(monkeypatch):
    monkeypatch.setattr(megatron_compat, "version", lambda name: "0.17.0")
    with pytest.raises(ConfigError, match="megatron-core 0.17.0 is not verified .* install megatron-core==0.16.1"):
        megatron_compat.check_version({})
    with pytest.warns(UserWarning, match="0.17.0 is not verified"):
        assert megatron_compat.check_version({megatron_compat.ACCEPT_UNVERIFIED: "1"}) is False
    monkeypatch.setattr(megatron_compat, "version", lambda name: "0.16.1")
    assert megatron_compat.check_version({})
