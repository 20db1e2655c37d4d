"""Export a Megatron checkpoint (saved at any TP/PP) to Hugging Face format.

    python tools/convert_megatron_to_hf.py --ckpt-dir CKPT --out-dir HF [--overwrite]
"""

import argparse
import sys

from megatron_bond.config import ConfigError
from megatron_bond.convert.convert import megatron_to_hf


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out-dir")
    args = p.parse_args()
    try:
        cfg = megatron_to_hf(args.ckpt_dir, args.out_dir, args.overwrite)
    except ConfigError as err:
        print(f"convert_megatron_to_hf: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir} ({cfg.model.family}, {cfg.model.num_layers} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
