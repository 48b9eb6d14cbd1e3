"""DSRL-NA: DSRL with noise aliasing, as an SB3 off-policy algorithm (Wagenmaker et al., 2025, "Steering Your
Diffusion Policy with Latent Space Reinforcement Learning", the noise-aliased variant)."""

from __future__ import annotations

import os
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy, ContinuousCritic
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.sac.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from torch.nn import functional as F

from sb3_flow.common.files import AtomicSaveMixin
from sb3_flow.common.utils import check_box_action_space, check_finite_loss, check_positive_finite, zero_init_actor
from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.policies.loading import BaseFlowPolicySource, load_flow_policy

SelfDSRLNA = TypeVar("SelfDSRLNA", bound="DSRLNA")


class DSRLNA(AtomicSaveMixin, SAC):
    """
    DSRL with noise aliasing. The environment is not wrapped: the replay buffer holds the real (normalized) actions.

    - the actor outputs ``u`` in [-1, 1]; the base policy's initial noise is ``w = noise_bound * u``, and the executed
      action is the base policy's deterministic integration from ``w``;
    - the action critic ``Q^A(s, a)`` (SAC's critic) learns by TD with next actions ``base(s', noise_bound * u')``,
      ``u' ~ actor(s')``;
    - the noise critic ``Q^W(s, u)`` is regressed onto ``min Q^A(s, base(s, w))`` for ``w ~ N(0, I)`` clipped to the
      bound (one bound everywhere: the authors' issue was a noise critic trained on unbounded noise);
    - the actor maximizes ``Q^W`` with SAC's entropy term.

    ``predict`` returns environment actions. Warm-up steps (``learning_starts``) roll out the base policy from
    ``N(0, I)`` noise, as the authors do, instead of uniform random actions.

    :param policy: SAC policy ("MlpPolicy", ...): its actor acts in the noise space, its critic is Q^A
    :param env: environment (Box action space)
    :param base_policy: the frozen FlowPolicy (object, FlowBC model or path); required. A path is remembered and
        the base re-attached from it on load; a base given as an object must be passed again:
        ``DSRLNA.load(path, env, base_policy=...)``
    :param noise_bound: the largest absolute initial noise (DSRL's action_magnitude: 1.5)
    :param noise_critic_samples: noise draws per state for the Q^W regression
    :param start_at_base: zero the actor's mean head (:func:`~sb3_flow.common.utils.zero_init_actor`), so that the
        untrained agent acts exactly as the base policy from zero noise instead of from whatever noise a random head
        picks (22 points below the base on the Pendulum benchmark)
    :param kwargs: SAC's parameters
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }

    def __init__(
        self,
        policy: str | type,
        env: GymEnv | str,
        base_policy: BaseFlowPolicySource | None = None,
        noise_bound: float = 1.5,
        noise_critic_samples: int = 1,
        start_at_base: bool = True,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ):
        self.noise_bound = check_positive_finite(noise_bound, "noise_bound")
        if isinstance(noise_critic_samples, bool) or not isinstance(noise_critic_samples, int) or noise_critic_samples <= 0:
            raise ValueError(f"noise_critic_samples must be a positive integer, got {noise_critic_samples!r}")
        self.noise_critic_samples = noise_critic_samples
        self.start_at_base = start_at_base
        self.base_policy = base_policy
        # A base given as a file is re-attached from there on load (the Zoo's `enjoy` passes no extra arguments).
        self.base_policy_path = os.path.abspath(base_policy) if isinstance(base_policy, (str, os.PathLike)) else None
        super().__init__(policy, env, _init_setup_model=False, **kwargs)
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        check_box_action_space(self.action_space, "DSRLNA")
        if self.base_policy is None and self.base_policy_path is not None:
            if not os.path.exists(self.base_policy_path):
                raise FileNotFoundError(
                    f"DSRLNA's base policy was loaded from {self.base_policy_path}, which no longer exists: "
                    "pass it again with DSRLNA.load(path, env, base_policy=...)"
                )
            self.base_policy = self.base_policy_path
        if self.base_policy is None:
            raise ValueError(
                "DSRLNA needs its base policy: DSRLNA(..., base_policy=...) or DSRLNA.load(path, env, base_policy=...)"
            )
        self.base_policy = load_flow_policy(self.base_policy, self.device, self.observation_space, self.action_space)
        self.base_policy.set_training_mode(False)
        for parameter in self.base_policy.parameters():
            parameter.requires_grad_(False)
        super()._setup_model()
        if self.start_at_base:
            zero_init_actor(self)  # load() overwrites these weights with the saved ones
        self.noise_critic: ContinuousCritic = self.policy.make_critic(features_extractor=None)
        self.noise_critic.optimizer = self.policy.optimizer_class(
            self.noise_critic.parameters(), lr=self.lr_schedule(1), **self.policy.optimizer_kwargs
        )

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "base_policy", "noise_critic"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        return [*state_dicts, "noise_critic", "noise_critic.optimizer"], variables

    def base_actions(self, observations: PyTorchObs, unit_noise: th.Tensor) -> th.Tensor:
        """Normalized environment actions of the base policy from initial noise ``noise_bound * unit_noise``."""
        assert isinstance(self.base_policy, FlowPolicy)
        # The frozen base is pure inference: its one-row calls (acting, warm-up) take the fast small-batch kernels.
        with th.no_grad(), self.base_policy.inference_kernels(observations):
            return self.base_policy.sample(observations, noise=self.noise_bound * unit_noise)

    def _unit_noise_draws(self, n_rows: int) -> th.Tensor:
        # w ~ N(0, I) clipped to the bound, expressed in the actor's [-1, 1] units.
        action_dim = int(np.prod(self.action_space.shape))
        return (th.randn(n_rows, action_dim, device=self.device) / self.noise_bound).clamp(-1.0, 1.0)

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Environment actions: the actor's noise decoded by the base policy."""
        self.policy.set_training_mode(False)
        obs_tensor, vectorized = self.policy.obs_to_tensor(observation)
        with th.no_grad():
            unit_noise = self.actor(obs_tensor, deterministic=deterministic)
            normalized = self.base_actions(obs_tensor, unit_noise).cpu().numpy()
        actions = self.policy.unscale_action(normalized).reshape((-1, *self.action_space.shape))
        return (actions if vectorized else actions[0]), state

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.num_timesteps >= learning_starts:
            return super()._sample_action(learning_starts, action_noise, n_envs)
        # Warm-up: the base policy from N(0, I) noise, not uniform random actions.
        obs_tensor, _ = self.policy.obs_to_tensor(self._last_obs)
        normalized = self.base_actions(obs_tensor, self._unit_noise_draws(n_envs)).cpu().numpy()
        return self.policy.unscale_action(normalized), normalized

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer, self.noise_critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)
        losses: dict[str, list[float]] = {"actor": [], "critic": [], "noise_critic": [], "ent_coef": []}

        for gradient_step in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = data.discounts if getattr(data, "discounts", None) is not None else self.gamma
            unit_noise_pi, log_prob = self.actor.action_log_prob(data.observations)
            log_prob = log_prob.reshape(-1, 1)
            ent_coef = self._entropy_coefficient(log_prob)
            losses["ent_coef"].append(ent_coef.item())

            with th.no_grad():
                next_unit_noise, next_log_prob = self.actor.action_log_prob(data.next_observations)
                next_actions = self.base_actions(data.next_observations, next_unit_noise)
                next_q = th.min(th.cat(self.critic_target(data.next_observations, next_actions), dim=1), dim=1, keepdim=True)[
                    0
                ]
                next_q = next_q - ent_coef * next_log_prob.reshape(-1, 1)
                target_q = data.rewards + (1 - data.dones) * discounts * next_q
            critic_loss = 0.5 * sum(F.mse_loss(q, target_q) for q in self.critic(data.observations, data.actions))
            self._step(self.critic.optimizer, critic_loss, "action-critic loss")
            losses["critic"].append(critic_loss.item())

            noise_critic_loss = self._noise_critic_loss(data.observations)
            self._step(self.noise_critic.optimizer, noise_critic_loss, "noise-critic loss")
            losses["noise_critic"].append(noise_critic_loss.item())

            q_pi = min_q(self.noise_critic(data.observations, unit_noise_pi))
            actor_loss = (ent_coef * log_prob - q_pi).mean()
            self._step(self.actor.optimizer, actor_loss, "actor loss")
            losses["actor"].append(actor_loss.item())

            if gradient_step % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", np.mean(losses["ent_coef"]))
        self.logger.record("train/actor_loss", np.mean(losses["actor"]))
        self.logger.record("train/critic_loss", np.mean(losses["critic"]))
        self.logger.record("train/noise_critic_loss", np.mean(losses["noise_critic"]))

    def _entropy_coefficient(self, log_prob: th.Tensor) -> th.Tensor:
        """SAC's temperature, with its own update when it is learned."""
        if self.ent_coef_optimizer is None or self.log_ent_coef is None:
            return self.ent_coef_tensor
        ent_coef = th.exp(self.log_ent_coef.detach())
        ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
        self._step(self.ent_coef_optimizer, ent_coef_loss, "entropy-coefficient loss")
        return ent_coef

    def _noise_critic_loss(self, observations: PyTorchObs) -> th.Tensor:
        """Regress Q^W(s, u) onto min Q^A(s, base(s, noise_bound * u)) for u from N(0, I) noise clipped to the bound."""
        losses = []
        for _ in range(self.noise_critic_samples):
            unit_noise = self._unit_noise_draws(len(data_rows(observations)))
            with th.no_grad():
                actions = self.base_actions(observations, unit_noise)
                target = min_q(self.critic(observations, actions))
            losses.append(0.5 * sum(F.mse_loss(q, target) for q in self.noise_critic(observations, unit_noise)))
        return sum(losses) / len(losses)

    def _step(self, optimizer: th.optim.Optimizer, loss: th.Tensor, what: str) -> None:
        check_finite_loss(loss, type(self).__name__, what, self._n_updates)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def learn(
        self: SelfDSRLNA,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "DSRLNA",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfDSRLNA:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


def min_q(q_values: tuple[th.Tensor, ...]) -> th.Tensor:
    """Minimum over a critic ensemble's outputs, shape (batch, 1)."""
    return th.min(th.cat(q_values, dim=1), dim=1, keepdim=True)[0]


def data_rows(observations: PyTorchObs) -> th.Tensor:
    """One tensor with the batch's rows (the first entry of a Dict observation)."""
    return next(iter(observations.values())) if isinstance(observations, dict) else observations
