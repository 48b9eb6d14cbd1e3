"""Gymnasium / VecEnv wrappers: steering a frozen base flow policy (DSRL noise space, residual actions) and action
chunking."""

from sb3_flow.common.callbacks import ZeroInitActorCallback
from sb3_flow.common.utils import zero_init_actor
from sb3_flow.wrappers.chunk import ActionChunkWrapper, chunked_env, make_chunked_vec_env
from sb3_flow.wrappers.noise import NoiseActionWrapper, VecNoiseActionWrapper
from sb3_flow.wrappers.residual import (
    ExecutedResidualDictReplayBuffer,
    ExecutedResidualReplayBuffer,
    ResidualActionWrapper,
    VecResidualActionWrapper,
    zero_init_residual,
)

__all__ = [
    "ActionChunkWrapper",
    "ExecutedResidualDictReplayBuffer",
    "ExecutedResidualReplayBuffer",
    "NoiseActionWrapper",
    "ResidualActionWrapper",
    "VecNoiseActionWrapper",
    "VecResidualActionWrapper",
    "ZeroInitActorCallback",
    "chunked_env",
    "make_chunked_vec_env",
    "zero_init_actor",
    "zero_init_residual",
]
