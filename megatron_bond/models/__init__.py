"""Megatron-core models: GPT backbones built from the run config, layout-invariant initialisation."""
