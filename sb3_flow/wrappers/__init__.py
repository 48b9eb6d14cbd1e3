"""Gymnasium / VecEnv wrappers that steer a frozen base flow policy (DSRL noise space, residual actions)."""

from sb3_flow.common.callbacks import ZeroInitActorCallback
from sb3_flow.common.utils import zero_init_actor
from sb3_flow.wrappers.noise import NoiseActionWrapper, VecNoiseActionWrapper
from sb3_flow.wrappers.residual import (
    ExecutedResidualDictReplayBuffer,
    ExecutedResidualReplayBuffer,
    ResidualActionWrapper,
    VecResidualActionWrapper,
    zero_init_residual,
)

__all__ = [
    "ExecutedResidualDictReplayBuffer",
    "ExecutedResidualReplayBuffer",
    "NoiseActionWrapper",
    "ResidualActionWrapper",
    "VecNoiseActionWrapper",
    "VecResidualActionWrapper",
    "ZeroInitActorCallback",
    "zero_init_actor",
    "zero_init_residual",
]
