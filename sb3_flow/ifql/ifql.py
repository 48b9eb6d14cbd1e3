"""IFQL: a BC flow, IQL critics and best-of-N action selection, offline and offline-to-online."""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from sb3_flow.bases.in_sample import InSampleFlowAlgorithm
from sb3_flow.bases.off_policy import DatasetSource
from sb3_flow.ifql.policies import CnnIFQLPolicy, IFQLPolicy, MultiInputIFQLPolicy


class IFQL(InSampleFlowAlgorithm):
    """
    Implicit flow Q-learning, the flow version of IDQL: a flow policy behaviour-cloned on the data, IQL critics trained
    in-sample, and actions chosen by best-of-N: N actions from the flow (one batched integration), the one with the
    highest Q. No policy gradient: the flow is never trained against the critic, so it cannot be destabilized by it.

    Papers: https://arxiv.org/abs/2502.02538 (Park, Li and Levine, 2025, the IFQL baseline of FQL);
    IDQL, https://arxiv.org/abs/2304.10573 (Hansen-Estruch et al., 2023)
    Reference implementation: https://github.com/seohongpark/fql (``agents/ifql.py``)

    Per minibatch: V(s) by expectile regression on ``min_k Q_target_k(s, a)``; ``Q_k(s, a)`` on
    ``r + gamma (1 - terminated) V(s')``; the flow's CFM loss. Offline: ``learn_offline(n_gradient_steps)``; online:
    ``learn(total_timesteps)`` acts with best-of-N and appends to the dataset's buffer.

    :param policy: "MlpPolicy", "CnnPolicy", "MultiInputPolicy" or an IFQLPolicy class
    :param env: environment or its id
    :param dataset: offline transitions (:class:`~sb3_flow.Demonstrations` or its path)
    :param expectile: IQL expectile (authors: 0.9)
    :param n_samples: N actions drawn per decision (authors: 32); a test-time knob of the policy
    :param selection: "argmax" (authors) or "softmax" (SfBC); a test-time knob
    :param temperature: softmax temperature; a test-time knob
    :param q_agg: "min" (authors) or "mean" over the critics, in the value loss and when scoring actions
    :param learning_rate: learning rate of every network (authors: 3e-4)
    :param batch_size: minibatch size (authors: 256)
    :param tau: Polyak coefficient of the target critic (authors: 0.005)
    :param gamma: discount factor (authors: 0.99)
    :param n_flow_steps: Euler steps K (authors: 10); overrides ``policy_kwargs``
    :param kwargs: the off-policy options of :class:`~sb3_flow.FQL` (buffer_size, learning_starts, train_freq,
        gradient_steps, replay_buffer_class, policy_kwargs, tensorboard_log, verbose, seed, device, ...)
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": IFQLPolicy,
        "CnnPolicy": CnnIFQLPolicy,
        "MultiInputPolicy": MultiInputIFQLPolicy,
    }
    policy_knobs = ("n_samples", "selection", "temperature")
    policy: IFQLPolicy

    def __init__(
        self,
        policy: str | type[IFQLPolicy],
        env: GymEnv | str,
        dataset: DatasetSource | None = None,
        expectile: float = 0.9,
        n_samples: int = 32,
        selection: str = "argmax",
        temperature: float = 1.0,
        q_agg: str = "min",
        learning_rate: float | Schedule = 3e-4,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        n_flow_steps: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        **kwargs: Any,
    ):
        super().__init__(
            policy,
            env,
            expectile=expectile,
            dataset=dataset,
            learning_rate=learning_rate,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            q_agg=q_agg,
            n_flow_steps=n_flow_steps,
            device=device,
            _init_setup_model=_init_setup_model,
            **kwargs,
        )
        self.n_samples = n_samples
        self.selection = selection
        self.temperature = temperature
        if _init_setup_model:
            self._setup_model()

    def _policy_options(self) -> dict[str, Any]:
        # The policy scores actions with the same aggregation as the value loss, as the authors' IFQL does.
        return {**super()._policy_options(), "q_agg": self.q_agg}
