"""Convert a Hugging Face Gemma (1, 2, 3 text) causal LM or reward model to a Megatron checkpoint.

    python tools/convert_hf_to_megatron.py --hf-dir HF --out-dir CKPT [--overwrite]

The checkpoint loads at any TP/PP; its config and tokenizer files travel with it.
"""

import sys

from megatron_bond.convert.convert import hf_to_megatron
from megatron_bond.convert.tool import run_tool

SOURCE = "--hf-dir"  # the input directory's option (tests/unit/test_readme_commands.py parses with it)

if __name__ == "__main__":  # the guard matters: dist_checkpointing.save starts helper processes
    sys.exit(run_tool(__doc__, SOURCE, hf_to_megatron))
