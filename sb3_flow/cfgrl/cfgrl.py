"""CFGRL: a flow conditioned on an optimality label from IQL critics, guided toward "optimal" at test time."""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, ReplayBufferSamples, Schedule

from sb3_flow.bases.in_sample import InSampleFlowAlgorithm
from sb3_flow.bases.off_policy import DatasetSource
from sb3_flow.cfgrl.policies import NOT_OPTIMAL_LABEL, OPTIMAL_LABEL, CFGRLPolicy, CnnCFGRLPolicy, MultiInputCFGRLPolicy
from sb3_flow.common.critics import aggregate_q
from sb3_flow.common.flow import sample_times
from sb3_flow.common.utils import check_finite_number
from sb3_flow.policies.conditional import NULL_LABEL


class CFGRL(InSampleFlowAlgorithm):
    """
    Classifier-free guidance RL: the flow is trained on the data's actions conditioned on an optimality label
    ``o = 1[A(s, a) >= advantage_threshold]`` with ``A = min_k Q_k(s, a) - V(s)`` from IQL critics trained beside it;
    the label is dropped to null with probability ``label_dropout``, so one network learns the unconditional (BC) flow
    and the optimal-conditioned one. Acting samples ``v = v(null) + w (v(optimal) - v(null))``; the guidance weight w
    is chosen at test time (``model.policy.guidance_weight``) without retraining: w = 0 is behaviour cloning, w = 1
    plain conditioning, w > 1 extrapolates toward the optimal actions.

    Paper: https://arxiv.org/abs/2505.23458 (Frans, Park, Abbeel and Levine, 2025, "Diffusion Guidance Is a
    Controllable Policy Improvement Operator")
    Reference implementation: https://github.com/kvfrans/cfgrl_submit (``ogbench/agents/flowiql.py``)

    :param policy: "MlpPolicy", "CnnPolicy", "MultiInputPolicy" or a CFGRLPolicy class
    :param env: environment or its id
    :param dataset: offline transitions (:class:`~sb3_flow.Demonstrations` or its path)
    :param guidance_weight: w used when acting (authors' code: 1.0; their evaluations sweep {0.5, 1, 1.5, 2, 3} and
        up to 100); a test-time knob of the policy
    :param advantage_threshold: the label is "optimal" where ``A >= advantage_threshold`` (authors: 0)
    :param label_dropout: probability of training a row with the null label (authors: 0.1)
    :param expectile: IQL expectile (authors: 0.9)
    :param q_agg: "min" (authors) or "mean" over the critics, in the value loss and the advantage
    :param learning_rate: learning rate of every network (authors: 3e-4)
    :param batch_size: minibatch size (authors: 1024 on OGBench; 256 here, as the other methods)
    :param tau: Polyak coefficient of the target critic (authors: 0.005)
    :param gamma: discount factor (authors: 0.99)
    :param n_flow_steps: Euler steps K (authors: 16); overrides ``policy_kwargs``
    :param kwargs: the off-policy options of :class:`~sb3_flow.FQL` (buffer_size, learning_starts, train_freq,
        gradient_steps, replay_buffer_class, policy_kwargs, tensorboard_log, verbose, seed, device, ...)
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": CFGRLPolicy,
        "CnnPolicy": CnnCFGRLPolicy,
        "MultiInputPolicy": MultiInputCFGRLPolicy,
    }
    policy_knobs = ("guidance_weight",)
    policy: CFGRLPolicy

    def __init__(
        self,
        policy: str | type[CFGRLPolicy],
        env: GymEnv | str,
        dataset: DatasetSource | None = None,
        guidance_weight: float = 1.0,
        advantage_threshold: float = 0.0,
        label_dropout: float = 0.1,
        expectile: float = 0.9,
        q_agg: str = "min",
        learning_rate: float | Schedule = 3e-4,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        n_flow_steps: int | None = 16,
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
        self.guidance_weight = check_finite_number(guidance_weight, "guidance_weight")
        self.advantage_threshold = check_finite_number(advantage_threshold, "advantage_threshold")
        self.label_dropout = check_finite_number(label_dropout, "label_dropout", minimum=0.0)
        if self.label_dropout >= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1): at 1 no row trains the labelled flow, got {label_dropout}")
        if _init_setup_model:
            self._setup_model()

    def _policy_options(self) -> dict[str, Any]:
        return {**super()._policy_options(), "q_agg": self.q_agg}

    def optimality_labels(self, data: ReplayBufferSamples) -> th.Tensor:
        """
        "optimal" (2) where ``agg_k Q_k(s, a) - V(s) >= advantage_threshold``, else "not optimal" (1), then null (0)
        with probability ``label_dropout``.

        :param data: a minibatch
        :return: one label per row, shape (batch,)
        """
        with th.no_grad():
            q_values = aggregate_q(self.policy.q_values(data.observations, data.actions), self.q_agg)
            advantages = q_values - self.policy.values(data.observations)
        optimal = advantages >= self.advantage_threshold
        labels = th.where(optimal, OPTIMAL_LABEL, NOT_OPTIMAL_LABEL)
        dropped = th.rand(labels.shape, device=labels.device) < self.label_dropout
        return th.where(dropped, NULL_LABEL, labels)

    def flow_loss(self, data: ReplayBufferSamples) -> tuple[th.Tensor, dict[str, float]]:
        labels = self.optimality_labels(data)
        actions = data.actions.reshape(len(data.actions), -1)
        times = sample_times((len(actions), 1), "uniform", device=self.device)
        noises = self.noise_draws(len(actions)).unsqueeze(1)
        # The labels were made above, in range: no check (it would read them back from the device every step).
        loss = self.policy.bc_policy.labelled_cfm_loss(data.observations, actions, labels, times, noises, False).mean()
        return loss, {"optimal_fraction": (labels == OPTIMAL_LABEL).float().mean().item()}
