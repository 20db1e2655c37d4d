"""Export a Megatron checkpoint (saved at any TP/PP) to Hugging Face format.

    python tools/convert_megatron_to_hf.py --ckpt-dir CKPT --out-dir HF [--overwrite]

CKPT: a converted checkpoint, a run's policy/, or any of its checkpoints/step_N (the policy's weights;
config and tokenizer from the run's policy.ckpt/hf).
"""

import sys

from megatron_bond.convert.convert import megatron_to_hf
from megatron_bond.convert.tool import run_tool

SOURCE = "--ckpt-dir"  # the input directory's option (tests/unit/test_readme_commands.py parses with it)

if __name__ == "__main__":
    sys.exit(run_tool(__doc__, SOURCE, megatron_to_hf))
