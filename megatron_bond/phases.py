"""The phases of a training step, by one name each: the memory planner plans the peak of each, and the
run's per-phase metrics (timings, CUDA peak memory) use the same names."""

PHASES = ("rollout", "scoring", "train", "eval", "checkpoint_save", "checkpoint_load")
