"""SB3 callbacks shipped with sb3-flow."""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback

from sb3_flow.common.utils import zero_init_actor


class ZeroInitActorCallback(BaseCallback):
    """
    :func:`~sb3_flow.common.utils.zero_init_actor` at the start of a fresh training run, for setups that build the
    agent themselves (an RL-Zoo YAML ``callback`` entry): a DSRL or residual agent then starts exactly at the base
    policy. A run that continues from a trained agent (``num_timesteps > 0``) is left untouched. With ``verbose=1``
    (``BaseCallback``'s argument) it prints a line when the actor is zeroed.
    """

    def _on_training_start(self) -> None:
        if self.model.num_timesteps > 0:
            return
        zero_init_actor(self.model)
        if self.verbose >= 1:
            print("ZeroInitActorCallback: actor head zeroed, the agent starts at the base policy")

    def _on_step(self) -> bool:
        return True
