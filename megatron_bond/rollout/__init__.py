"""Sampling from the policy and the anchor under TP/PP (docs/rollout.md)."""
