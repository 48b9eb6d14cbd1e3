"""Gymnasium / VecEnv wrappers that steer a frozen base flow policy (DSRL noise space, residual actions)."""
