"""Convert a Hugging Face Gemma (1, 2, 3 text) causal LM or reward model to a Megatron checkpoint.

    python tools/convert_hf_to_megatron.py --hf-dir HF --out-dir CKPT [--overwrite]

The checkpoint loads at any TP/PP; its config and tokenizer files travel with it.
"""

import argparse
import sys

from megatron_bond.config import ConfigError
from megatron_bond.convert.convert import hf_to_megatron


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out-dir")
    args = p.parse_args()
    try:
        cfg = hf_to_megatron(args.hf_dir, args.out_dir, args.overwrite)
    except ConfigError as err:
        print(f"convert_hf_to_megatron: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir} ({cfg.model.family}, {cfg.model.num_layers} layers)")
    return 0


if __name__ == "__main__":  # the guard matters: dist_checkpointing.save starts helper processes
    sys.exit(main())
