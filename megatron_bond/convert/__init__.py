"""HF <-> Megatron weight conversion (docs/conversion.md)."""
