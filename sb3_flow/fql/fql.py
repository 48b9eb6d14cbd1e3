"""FQL: Flow Q-Learning, offline and offline-to-online, on sb3-flow's off-policy core."""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, ReplayBufferSamples, Schedule

from sb3_flow.bases.off_policy import DatasetSource, FlowOffPolicyAlgorithm
from sb3_flow.common.utils import check_finite_number
from sb3_flow.fql.policies import CnnFQLPolicy, FQLPolicy, MultiInputFQLPolicy


class FQL(FlowOffPolicyAlgorithm):
    """
    Flow Q-Learning: a flow policy is behaviour-cloned on the data, and a one-step policy ``mu(s, z)`` is trained to
    maximize Q while staying close to the flow's K-step integral from the same noise z (distillation), so that no
    gradient flows through the integration and no integration runs at inference.

    Paper: https://arxiv.org/abs/2502.02538 (Park, Li and Levine, 2025)
    Reference implementation: https://github.com/seohongpark/fql (``agents/fql.py``)

    Per minibatch, as in the reference:

    - critic: ``mean_k (Q_k(s, a) - (r + gamma (1 - terminated) agg_k Q'_k(s', clip(mu(s', z')))))^2``;
    - flow: the CFM loss of the data's actions (uniform times);
    - one-step policy: ``alpha * ||mu(s, z) - clip(flow(s, z))||^2 - mean_k Q_k(s, clip(mu(s, z)))``, the Q term
      divided by ``mean |Q|`` (no gradient) when ``normalize_q_loss``.

    The critic, the flow and the one-step policy are stepped in turn on the same minibatch, as SB3's SAC steps its
    critic and actor; the reference takes one joint step of their summed losses.

    Offline: ``model.learn_offline(n_gradient_steps)`` on the dataset given as ``dataset=``; online:
    ``model.learn(total_timesteps)`` appends to the same buffer (FQL's offline-to-online).

    :param policy: "MlpPolicy", "CnnPolicy", "MultiInputPolicy" or an FQLPolicy class
    :param env: environment or its id
    :param dataset: offline transitions (:class:`~sb3_flow.Demonstrations` or its path)
    :param alpha: distillation weight; task-dependent (authors: cube / scene 300, puzzle 1000, antmaze 10,
        humanoidmaze 30; on a new task sweep {0.03, 0.1, 0.3, 1, 3, 10} with ``normalize_q_loss=True``)
    :param learning_rate: learning rate of every network (authors: 3e-4)
    :param batch_size: minibatch size (authors: 256)
    :param tau: Polyak coefficient of the target critic (authors: 0.005)
    :param gamma: discount factor (authors: 0.99; 0.995 on the giant / humanoid mazes)
    :param q_agg: "mean" (authors' default) or "min" over the critics in the TD target
    :param normalize_q_loss: divide the policy's Q term by mean |Q| (makes alpha invariant to the reward scale)
    :param action_horizon: H > 1 acts in chunks of H actions: QC-FQL (Q-chunking, Li et al., 2025; the authors: H = 5,
        alpha 100 on OGBench); see :class:`~sb3_flow.bases.off_policy.FlowOffPolicyAlgorithm`
    :param n_flow_steps: Euler steps K of the BC flow (authors: 10); overrides ``policy_kwargs``
    :param buffer_size: online transitions kept besides the dataset
    :param learning_starts: random-action steps before online training (0: act with the pretrained policy)
    :param train_freq: online steps between updates
    :param gradient_steps: gradient steps per update
    :param replay_buffer_class: replay buffer class (must hold offline data)
    :param replay_buffer_kwargs: its keyword arguments
    :param policy_kwargs: policy keyword arguments (net_arch, critic_net_arch, n_critics, critic_layer_norm, ...)
    :param stats_window_size: SB3 logging window
    :param tensorboard_log: tensorboard folder
    :param verbose: verbosity
    :param seed: random seed
    :param device: "auto", "cpu" or "cuda"
    :param _init_setup_model: build the networks now
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": FQLPolicy,
        "CnnPolicy": CnnFQLPolicy,
        "MultiInputPolicy": MultiInputFQLPolicy,
    }
    policy: FQLPolicy

    def __init__(
        self,
        policy: str | type[FQLPolicy],
        env: GymEnv | str,
        dataset: DatasetSource | None = None,
        alpha: float = 10.0,
        learning_rate: float | Schedule = 3e-4,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        q_agg: str = "mean",
        normalize_q_loss: bool = False,
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
        optimizers = ["policy.bc_policy.optimizer", "policy.critic_optimizer", "policy.actor_optimizer"]
        return ["policy", *optimizers], []

    def actor_loss(self, data: ReplayBufferSamples) -> tuple[th.Tensor, dict[str, float]]:
        """The one-step policy's distillation toward the flow (same noise, no gradient through the flow), plus its Q term."""
        noise = self.noise_draws(len(data.rewards))
        with th.no_grad():
            flow_actions = self.policy.flow_actions(data.observations, noise)
        actions = self.policy.one_step_actions(data.observations, noise)
        distill_loss = (actions - flow_actions).pow(2).mean()
        with self.policy.critic_frozen():
            q_values = self.policy.q_values(data.observations, actions.clamp(-1.0, 1.0)).mean(dim=0)
        q_loss = self.q_maximization_loss(q_values, self.normalize_q_loss)
        logs = {"distill_loss": distill_loss.item(), "q_loss": q_loss.item(), "q_policy": q_values.mean().item()}
        return self.alpha * distill_loss + q_loss, logs

    def gradient_step(self, data: ReplayBufferSamples) -> dict[str, float]:
        with th.no_grad():
            next_noise = self.noise_draws(len(data.rewards))
            next_actions = self.policy.one_step_actions(data.next_observations, next_noise).clamp(-1.0, 1.0)
        critic_loss = self.critic_loss(data, next_actions)
        self.optimizer_step(self.policy.critic_optimizer, critic_loss, "critic loss")
        flow_loss = self.bc_flow_loss(data)
        self.optimizer_step(self.policy.bc_policy.optimizer, flow_loss, "BC flow loss")
        actor_loss, logs = self.actor_loss(data)
        self.optimizer_step(self.policy.actor_optimizer, actor_loss, "one-step policy loss")
        return {"critic_loss": critic_loss.item(), "bc_flow_loss": flow_loss.item(), "actor_loss": actor_loss.item(), **logs}
