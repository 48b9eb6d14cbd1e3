"""Gymnasium / VecEnv wrappers that steer a frozen base flow policy (DSRL noise space, residual actions)."""

from sb3_flow.wrappers.noise import NoiseActionWrapper, VecNoiseActionWrapper
from sb3_flow.wrappers.residual import ResidualActionWrapper, VecResidualActionWrapper, zero_init_residual

__all__ = [
    "NoiseActionWrapper",
    "ResidualActionWrapper",
    "VecNoiseActionWrapper",
    "VecResidualActionWrapper",
    "zero_init_residual",
]
