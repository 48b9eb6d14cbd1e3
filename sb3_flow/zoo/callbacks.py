"""
SB3 callbacks for Zoo runs (usable in any ``model.learn`` too): offline pretraining before online training.

The RL-Zoo builds a model and calls ``model.learn(n_timesteps, callback=...)``, in ``train`` and in every ``tune``
trial; a config's ``offline_steps: N`` becomes :class:`OfflinePretraining` (``sb3_flow.zoo.hyperparams``), which runs
``model.learn_offline(N)`` when that online training starts.
"""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

from sb3_flow.common.utils import check_positive_int
from sb3_flow.registry import offline_algorithms

# What ``learn_offline`` sets up for its own run (through SB3's ``_setup_learn``) that belongs to the online run under
# way: its step target, start count and clock (progress, fps), its logger (the online run's tensorboard folder) and its
# episode statistics. The environment is reset again by ``learn_offline``: the online run continues from that reset.
_ONLINE_RUN_STATE = (
    "_total_timesteps",
    "_num_timesteps_at_start",
    "_current_progress_remaining",
    "start_time",
    "_logger",
    "ep_info_buffer",
    "ep_success_buffer",
)


class OfflinePretraining(BaseCallback):
    """
    When online training starts, first train the model offline on its replay buffer (the dataset given as
    ``dataset=``) with ``model.learn_offline``, until it has taken ``n_gradient_steps`` offline gradient steps in all:
    a model that has already taken them (loaded to continue training) is not pretrained again. Then ``learn`` goes on
    online with the same buffer, networks and optimizers; ``num_timesteps`` counts environment steps only and
    ``model.n_offline_steps`` the offline gradient steps. The offline phase logs as its own run (tensorboard
    ``<Algo>_offline_<n>``, x-axis in gradient steps); the callbacks given to ``learn`` (evaluation, checkpoints)
    start with the online phase.

    For FQL, FBRAC, IFQL, CFGRL: the :class:`~sb3_flow.bases.off_policy.FlowOffPolicyAlgorithm` subclasses
    (``sb3_flow.registry.offline_algorithms``). In an RL-Zoo config, write ``offline_steps: N`` (or list this callback
    under ``callback:``).

    :param n_gradient_steps: offline gradient steps the model should have taken before acting (0: none)
    :param log_interval: dump the offline logs every this many gradient steps
    :param progress_bar: show a progress bar over the offline gradient steps
    :param verbose: verbosity
    """

    def __init__(self, n_gradient_steps: int, log_interval: int = 1000, progress_bar: bool = False, verbose: int = 0):
        super().__init__(verbose)
        self.n_gradient_steps = check_positive_int(n_gradient_steps, "n_gradient_steps", minimum=0)
        self.log_interval = log_interval
        self.progress_bar = progress_bar

    def _init_callback(self) -> None:
        if not callable(getattr(self.model, "learn_offline", None)):
            raise TypeError(
                f"OfflinePretraining needs an algorithm that learns offline ({', '.join(offline_algorithms())}), got "
                f"{type(self.model).__name__}"
            )

    def _on_training_start(self) -> None:
        model: Any = self.model
        remaining = self.n_gradient_steps - model.n_offline_steps
        if remaining <= 0:
            return
        if self.verbose:
            print(f"Offline pretraining: {remaining} gradient steps on {model.replay_buffer.size()} transitions")
        online_run = {name: getattr(model, name) for name in _ONLINE_RUN_STATE}
        model.learn_offline(remaining, log_interval=self.log_interval, progress_bar=self.progress_bar)
        for name, value in online_run.items():
            setattr(model, name, value)

    def _on_step(self) -> bool:
        return True
