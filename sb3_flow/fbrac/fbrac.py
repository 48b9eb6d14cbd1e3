"""FBRAC: the backprop-through-time baseline of FQL, on sb3-flow's off-policy core."""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, ReplayBufferSamples, Schedule

from sb3_flow.bases.off_policy import DatasetSource, FlowOffPolicyAlgorithm
from sb3_flow.common.utils import check_finite_number
from sb3_flow.policies.flow_q import CnnFlowQPolicy, FlowQPolicy, MultiInputFlowQPolicy


class FBRAC(FlowOffPolicyAlgorithm):
    """
    Flow behaviour-regularized actor-critic: the flow policy itself is the actor, trained to maximize
    ``Q(s, clip(flow(s, z)))`` by backpropagating through all K integration steps, plus ``alpha`` times its CFM loss
    on the data. This is the baseline FQL exists to beat (its paper's "FBRAC": the gradient through the K-step
    recursion is unstable and costs K backward passes); it is offered to measure that, not as a default.

    Paper: https://arxiv.org/abs/2502.02538 (Park, Li and Levine, 2025, the FBRAC baseline)
    Reference implementation: https://github.com/seohongpark/fql (FQL; the baseline is described in the paper)

    The parameters not listed here are those of :class:`~sb3_flow.fql.FQL`.

    :param policy: "MlpPolicy", "CnnPolicy", "MultiInputPolicy" or a FlowQPolicy class
    :param env: environment or its id
    :param dataset: offline transitions (:class:`~sb3_flow.Demonstrations` or its path)
    :param alpha: weight of the CFM (behaviour-cloning) loss beside the Q term
    :param normalize_q_loss: divide the Q term by mean |Q| (no gradient)
    :param q_agg: "mean" or "min" over the critics in the TD target
    :param action_horizon: H > 1 acts in chunks of H actions (see :class:`~sb3_flow.bases.off_policy.FlowOffPolicyAlgorithm`)
    :param n_flow_steps: Euler steps K (overrides ``policy_kwargs``)
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": FlowQPolicy,
        "CnnPolicy": CnnFlowQPolicy,
        "MultiInputPolicy": MultiInputFlowQPolicy,
    }

    def __init__(
        self,
        policy: str | type[FlowQPolicy],
        env: GymEnv | str,
        dataset: DatasetSource | None = None,
        alpha: float = 1.0,
        learning_rate: float | Schedule = 3e-4,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        q_agg: str = "mean",
        normalize_q_loss: bool = True,
        action_horizon: int = 1,
        n_flow_steps: int | None = None,
        buffer_size: int = 1_000_000,
        learning_starts: int = 0,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            dataset=dataset,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            q_agg=q_agg,
            action_horizon=action_horizon,
            n_flow_steps=n_flow_steps,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )
        self.alpha = check_finite_number(alpha, "alpha", minimum=0.0)
        self.normalize_q_loss = normalize_q_loss
        if _init_setup_model:
            self._setup_model()

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.bc_policy.optimizer", "policy.critic_optimizer"], []

    def gradient_step(self, data: ReplayBufferSamples) -> dict[str, float]:
        with th.no_grad():
            next_actions = self.policy.flow_actions(data.next_observations, self.noise_draws(len(data.rewards)))
        critic_loss = self.critic_loss(data, next_actions)
        self.optimizer_step(self.policy.critic_optimizer, critic_loss, "critic loss")

        flow_loss = self.bc_flow_loss(data)
        # The gradient of Q flows back through every one of the K integration steps.
        actions = self.policy.flow_actions(data.observations, self.noise_draws(len(data.rewards)))
        with self.policy.critic_frozen():
            q_values = self.policy.q_values(data.observations, actions).mean(dim=0)
        q_loss = self.q_maximization_loss(q_values, self.normalize_q_loss)
        actor_loss = self.alpha * flow_loss + q_loss
        self.optimizer_step(self.policy.bc_policy.optimizer, actor_loss, "flow actor loss")
        return {
            "critic_loss": critic_loss.item(),
            "bc_flow_loss": flow_loss.item(),
            "q_loss": q_loss.item(),
            "q_policy": q_values.mean().item(),
        }
