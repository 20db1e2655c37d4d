"""Export a Megatron checkpoint (saved at any TP/PP) to Hugging Face format.

    python tools/convert_megatron_to_hf.py --ckpt-dir CKPT --out-dir HF [--peft-dir PEFT] [--overwrite]

A checkpoint with LoRA adapters (model.lora) exports merged (W + (alpha/r)·B·A); --peft-dir also writes
the adapters as a PEFT directory (adapter_config.json + adapter_model.safetensors) for the base model.
"""

import sys

from megatron_bond.convert.convert import megatron_to_hf
from megatron_bond.convert.tool import run_tool

if __name__ == "__main__":
    sys.exit(run_tool(__doc__, "--ckpt-dir", megatron_to_hf,
                      {"--peft-dir": "also write the LoRA adapters as a PEFT adapter directory (loads onto the base with peft)"}))
