"""Export a Megatron checkpoint (saved at any TP/PP) to Hugging Face format.

    python tools/convert_megatron_to_hf.py --ckpt-dir CKPT --out-dir HF [--peft-dir PEFT] [--overwrite]

CKPT: a converted checkpoint, a run's policy/, or any of its checkpoints/step_N (the policy's weights;
config and tokenizer from the run's policy.ckpt/hf). A checkpoint with LoRA adapters (model.lora) exports
merged (W + (alpha/r)·B·A); --peft-dir also writes the adapters as a PEFT directory (adapter_config.json +
adapter_model.safetensors) for the base model.
"""

import sys

from megatron_bond.convert.convert import megatron_to_hf
from megatron_bond.convert.tool import run_tool

SOURCE = "--ckpt-dir"  # the input directory's option (tests/unit/test_readme_commands.py parses with it)
OPTIONS = {"--peft-dir": "also write the LoRA adapters as a PEFT adapter directory (loads onto the base with peft)"}

if __name__ == "__main__":
    sys.exit(run_tool(__doc__, SOURCE, megatron_to_hf, OPTIONS))
