"""DSRL-NA: DSRL with noise aliasing, as an SB3 off-policy algorithm."""

from __future__ import annotations

import os
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy, ContinuousCritic
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, TensorDict
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.sac.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from torch.nn import functional as F

from sb3_flow.common.files import ModelFileMixin
from sb3_flow.common.observations import check_finite_observations, n_rows, stack_rows
from sb3_flow.common.utils import (
    check_box_action_space,
    check_finite_learning_rate,
    check_finite_loss,
    check_positive_finite,
    check_positive_int,
    zero_init_actor,
)
from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.policies.loading import BaseFlowPolicySource
from sb3_flow.wrappers.frozen import frozen_base_policy, unscale_rows

SelfDSRLNA = TypeVar("SelfDSRLNA", bound="DSRLNA")

# Name of the frozen base among the saved state dicts (the zip's "base_policy.pth").
BASE_POLICY_KEY = "base_policy"


class DSRLNA(ModelFileMixin, SAC):
    """
    DSRL with noise aliasing (DSRL-NA): SAC in the initial-noise space of a frozen flow policy, trained on the real
    actions (Wagenmaker et al., 2025, "Steering Your Diffusion Policy with Latent Space Reinforcement Learning").
    The environment is not wrapped: the replay buffer holds the real (normalized) actions.

    Paper: https://arxiv.org/abs/2506.15799
    Reference implementation: https://github.com/ajwagen/dsrl

    - the actor outputs ``u`` in [-1, 1]; the base policy's initial noise is ``w = noise_bound * u``, and the executed
      action is the base policy's deterministic integration from ``w``;
    - the action critic ``Q^A(s, a)`` (SAC's critic) learns by TD with next actions ``base(s', noise_bound * u')``,
      ``u' ~ actor(s')``;
    - the noise critic ``Q^W(s, u)`` is regressed head by head onto ``Q^A(s, base(s, w))`` (head i onto head i, as in
      the reference) for ``w ~ N(0, I)`` clipped to the bound (one bound everywhere: the authors' issue was a noise
      critic trained on unbounded noise);
    - the actor maximizes the minimum over the heads of ``Q^W`` with SAC's entropy term, whose target is the authors'
      ``target_entropy = 0`` by default.

    ``predict`` returns environment actions. Warm-up steps (``learning_starts``) roll out the base policy from
    ``N(0, I)`` noise, as the authors do, instead of uniform random actions. The base policy is acted through as a
    frozen copy (the object passed in is left as it was) and saved inside the model file, so ``DSRLNA.load(path)``
    needs nothing else. One difference from the reference remains: it fits Q^W with its own number of gradient steps
    per update (``noise_critic_grad_steps``); DSRLNA takes one Q^W step per gradient step, over ``noise_critic_samples``
    noise draws per state.

    :param policy: SAC policy ("MlpPolicy", ...): its actor acts in the noise space, its critic is Q^A
    :param env: environment (Box action space)
    :param base_policy: the FlowPolicy to steer (object, FlowBC model or path); required. On ``load`` the saved copy
        is used unless a ``base_policy`` is passed, which then replaces it
    :param noise_bound: the largest absolute initial noise (DSRL's action_magnitude: 1.5)
    :param noise_critic_samples: noise draws per state for the Q^W regression
    :param start_at_base: zero the actor's mean head (:func:`~sb3_flow.common.utils.zero_init_actor`), so that the
        untrained agent acts exactly as the base policy from zero noise instead of from whatever noise a random head
        picks
    :param target_entropy: target of SAC's entropy-coefficient tuning, in the actor's [-1, 1] noise units: 0, the
        authors' value for every task (SAC's "auto" is -dim(A))
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
        target_entropy: str | float = 0.0,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ):
        self.noise_bound = check_positive_finite(noise_bound, "noise_bound")
        self.noise_critic_samples = check_positive_int(noise_critic_samples, "noise_critic_samples")
        self.start_at_base = start_at_base
        self.base_policy = base_policy
        # What the base is rebuilt from on load (its class and constructor parameters; its weights are a state dict).
        self.base_policy_data: dict[str, Any] | None = None
        # Where a base given as a file came from (files saved before the base was stored inside re-attach from here).
        self.base_policy_path = os.path.abspath(base_policy) if isinstance(base_policy, (str, os.PathLike)) else None
        self._base_weights_pending = False
        # SB3's off-policy constructor writes use_sde into policy_kwargs: a copy keeps the caller's dict as it was.
        kwargs["policy_kwargs"] = dict(kwargs.get("policy_kwargs") or {})
        super().__init__(policy, env, target_entropy=target_entropy, _init_setup_model=False, **kwargs)
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        check_box_action_space(self.action_space, "DSRLNA")
        self.base_policy, self._base_weights_pending = self._attach_base_policy()
        self.base_policy_data = base_policy_data(self.base_policy)
        super()._setup_model()
        if self.start_at_base:
            zero_init_actor(self)  # load() overwrites these weights with the saved ones
        self.noise_critic: ContinuousCritic = self.policy.make_critic(features_extractor=None)
        self.noise_critic.optimizer = self.policy.optimizer_class(
            self.noise_critic.parameters(), lr=self.lr_schedule(1), **self.policy.optimizer_kwargs
        )

    def _attach_base_policy(self) -> tuple[FlowPolicy, bool]:
        """The frozen base, and whether its weights are still to come from a loaded file's parameters."""
        target = (self.device, self.observation_space, self.action_space)
        if self.base_policy is not None:  # given to the constructor, or to load (where it replaces the saved copy)
            return frozen_base_policy(self.base_policy, *target), False
        if self.base_policy_data is not None:  # a loaded model file: built here, its weights set with the others
            return frozen_base_policy(policy_from_data(self.base_policy_data), *target), True
        if self.base_policy_path is not None:
            if not os.path.exists(self.base_policy_path):
                raise FileNotFoundError(
                    f"DSRLNA's base policy was loaded from {self.base_policy_path}, which no longer exists: "
                    "pass it again with DSRLNA.load(path, env, base_policy=...)"
                )
            return frozen_base_policy(self.base_policy_path, *target), False
        raise ValueError("DSRLNA needs its base policy: DSRLNA(..., base_policy=...)")

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "base_policy", "noise_critic", "_base_weights_pending"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        return [*state_dicts, "noise_critic", "noise_critic.optimizer", BASE_POLICY_KEY], variables

    def set_parameters(
        self,
        load_path_or_dict: str | TensorDict,
        exact_match: bool = True,
        device: th.device | str = "auto",
    ) -> None:
        """
        SB3's ``set_parameters``; the base policy stays frozen: its weights are taken from the parameters only while
        loading a model whose base is rebuilt from the file (a base passed to ``load`` is kept as given, and so is the
        base of a built model).

        :param load_path_or_dict: a model zip, or a dict of state dicts as ``get_parameters`` returns
        :param exact_match: every module's parameters must be given
        :param device: device to load them on
        """
        if isinstance(load_path_or_dict, dict):
            params = dict(load_path_or_dict)
        else:
            _, params, _ = load_from_zip_file(load_path_or_dict, device=device, load_data=False)
        if not self._base_weights_pending:
            params[BASE_POLICY_KEY] = self.base_policy.state_dict()  # a no-op for the base: it stays as it is
        elif BASE_POLICY_KEY not in params:
            raise ValueError("The model file describes DSRLNA's base policy but holds no weights for it (damaged file?)")
        super().set_parameters(params, exact_match=exact_match, device=device)
        self._base_weights_pending = False

    def base_actions(self, observations: PyTorchObs, unit_noise: th.Tensor) -> th.Tensor:
        """Normalized environment actions of the base policy from initial noise ``noise_bound * unit_noise``."""
        assert isinstance(self.base_policy, FlowPolicy)
        # The frozen base is pure inference: its one-row calls (acting, warm-up) take the fast small-batch kernels.
        with th.no_grad(), self.base_policy.inference_kernels(observations):
            return self.base_policy.sample(observations, noise=self.noise_bound * unit_noise)

    def _unit_noise_draws(self, rows: int) -> th.Tensor:
        # w ~ N(0, I) clipped to the bound, expressed in the actor's [-1, 1] units.
        action_dim = int(np.prod(self.action_space.shape))
        return (th.randn(rows, action_dim, device=self.device) / self.noise_bound).clamp(-1.0, 1.0)

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Environment actions: the actor's noise decoded by the base policy."""
        self.policy.set_training_mode(False)
        # Checked on the numpy input: a check on the tensor would copy it back from an accelerator every step.
        check_finite_observations(observation, "DSRLNA.predict")
        obs_tensor, vectorized = self.policy.obs_to_tensor(observation)
        with th.no_grad():
            unit_noise = self.actor(obs_tensor, deterministic=deterministic)
            normalized = self.base_actions(obs_tensor, unit_noise).cpu().numpy()
        actions = unscale_rows(self.base_policy, normalized)
        return (actions if vectorized else actions[0]), state

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.num_timesteps >= learning_starts:
            return super()._sample_action(learning_starts, action_noise, n_envs)  # through predict
        # Warm-up: the base policy from N(0, I) noise, not uniform random actions.
        check_finite_observations(self._last_obs, "DSRLNA's rollout")
        obs_tensor, _ = self.policy.obs_to_tensor(self._last_obs)
        normalized = self.base_actions(obs_tensor, self._unit_noise_draws(n_envs)).cpu().numpy()
        return unscale_rows(self.base_policy, normalized), normalized

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        # Checked before they reach the buffer: a NaN next observation would otherwise surface inside torch in train.
        check_finite_observations(new_obs, "DSRLNA's rollout")
        terminal = [info["terminal_observation"] for info in infos if info.get("terminal_observation") is not None]
        if terminal:
            check_finite_observations(stack_rows(terminal), "DSRLNA's rollout (an episode's last observation)")
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer, self.noise_critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)
        # Before any step: a schedule that returned NaN would write NaN into every weight even with a finite loss.
        check_finite_learning_rate(
            self.lr_schedule(self._current_progress_remaining), type(self).__name__, self._current_progress_remaining
        )
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
                next_q = min_q(self.critic_target(data.next_observations, next_actions))
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
        """
        Regress each head of Q^W(s, u) onto the same head of Q^A(s, base(s, noise_bound * u)), for u from N(0, I)
        noise clipped to the bound (the reference pairs the heads; the actor takes the minimum over Q^W's heads).
        """
        losses = []
        for _ in range(self.noise_critic_samples):
            unit_noise = self._unit_noise_draws(n_rows(observations))
            with th.no_grad():
                targets = self.critic(observations, self.base_actions(observations, unit_noise))
            noise_qs = self.noise_critic(observations, unit_noise)
            losses.append(0.5 * sum(F.mse_loss(q, target) for q, target in zip(noise_qs, targets, strict=True)))
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


def _no_learning(_progress_remaining: float) -> float:
    return 0.0


def base_policy_data(policy: FlowPolicy) -> dict[str, Any]:
    """What a frozen base is rebuilt from: its class and constructor parameters (its weights are saved apart)."""
    parameters = policy._get_constructor_parameters()
    # The recorded schedule is a bound method of the policy: saving it would pickle the whole policy into the data.
    parameters.pop("lr_schedule", None)
    return {"policy_class": type(policy), "constructor_parameters": parameters}


def policy_from_data(data: dict[str, Any]) -> FlowPolicy:
    """A policy built from :func:`base_policy_data` (with fresh weights, replaced by the saved ones on load)."""
    return data["policy_class"](lr_schedule=_no_learning, **data["constructor_parameters"])


def min_q(q_values: tuple[th.Tensor, ...]) -> th.Tensor:
    """Minimum over a critic ensemble's outputs, shape (batch, 1)."""
    return th.min(th.cat(q_values, dim=1), dim=1, keepdim=True)[0]
