"""The run's config: one typed dataclass per recipe section (model.py, algorithm.py, run.py), checked by
validate.py; ``to_dict()`` is what checkpoints carry, ``from_dict`` reads it back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from megatron_bond.config.algorithm import BondConfig, OptimizerConfig
from megatron_bond.config.model import LoraConfig, ModelConfig, ParallelConfig
from megatron_bond.config.parse import build
from megatron_bond.config.run import (
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    PolicyConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    TrainConfig,
)
from megatron_bond.config.validate import check_batch_split, validate

__all__ = ["BondConfig", "CheckpointConfig", "Config", "DataConfig", "LoggingConfig", "LoraConfig", "ModelConfig", "OptimizerConfig",
           "ParallelConfig", "PolicyConfig", "RewardConfig", "RolloutConfig", "RunConfig", "TrainConfig"]


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    bond: BondConfig = field(default_factory=BondConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return build(cls, data)

    def validate(self, architecture: bool = True) -> "Config":
        validate(self, architecture)
        return self

    def check_batch_split(self, dp: int) -> None:
        """The batch split over ``dp`` data-parallel ranks and into microbatches (the trainer at start,
        the memory planner for an allocation)."""
        check_batch_split(self, dp)
