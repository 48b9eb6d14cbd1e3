"""FlowPPO: PPO for flow policies with FPO / FPO++ likelihood-ratio surrogates."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from sb3_flow.bases.on_policy import FlowOnPolicyAlgorithm, PolicyTerms, trust_region_surrogate
from sb3_flow.common.flow import CFM_LOSS_WEIGHTINGS, TIME_SAMPLING_MODES, cfm_loss_weights, sample_times
from sb3_flow.policies.actor_critic import (
    CnnFlowActorCriticPolicy,
    FlowActorCriticPolicy,
    MultiInputFlowActorCriticPolicy,
)
from sb3_flow.policies.loading import BaseFlowPolicySource

SelfFlowPPO = TypeVar("SelfFlowPPO", bound="FlowPPO")

RATIO_MODES = ("per_action", "per_sample")

__all__ = ["FlowDictRolloutBuffer", "FlowPPO", "FlowRolloutBuffer", "fpo_log_ratio", "trust_region_surrogate"]


class FlowRolloutBufferSamples(NamedTuple):
    observations: Any
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    times: th.Tensor
    noises: th.Tensor
    old_cfm_losses: th.Tensor


class FPODrawsMixin:
    """
    Adds FPO's per-action (time, noise) draws and their old per-draw CFM losses to an SB3 rollout buffer.

    The draws do not depend on the rollout, so they are made once the rollout is complete, together with the old
    losses, before any gradient step: the same as making them at rollout time, without slowing the rollout down.
    The buffer's ``actions`` are the pre-clip actions the flow generated (see FlowActorCriticPolicy).
    """

    buffer_size: int
    n_envs: int
    generator_ready: bool
    device: th.device
    old_cfm_losses: th.Tensor | None = None

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self.old_cfm_losses = None

    def prepare_draws(
        self,
        policy: FlowActorCriticPolicy,
        n_draws: int,
        time_sampling: str,
        batch_size: int,
    ) -> None:
        """
        Draw ``n_draws`` (t, noise) pairs per stored action and compute their CFM losses under ``policy``.

        :param policy: the policy that collected the rollout, unchanged since
        :param n_draws: N
        :param time_sampling: "uniform" or "grid" (the policy's K-point grid)
        :param batch_size: chunk size; equal to the training minibatch size so the numerics match
        """
        self.old_cfm_losses = None
        if not self.generator_ready:
            # SB3 flattens (n_steps, n_envs) into one axis lazily, when get() first runs: let it do so.
            next(self.get(batch_size=1))  # type: ignore[attr-defined]
        n_rows = self.buffer_size * self.n_envs
        action_dim = self.actions.shape[-1]  # type: ignore[attr-defined]
        self.draw_times = sample_times((n_rows, n_draws), time_sampling, policy.n_flow_steps, device=self.device)
        self.draw_noises = th.randn((n_rows, n_draws, action_dim), device=self.device)
        losses = []
        with th.no_grad():
            for start in range(0, n_rows, batch_size):
                rows = np.arange(start, min(start + batch_size, n_rows))
                samples = super()._get_samples(rows)  # type: ignore[misc]
                losses.append(
                    policy.cfm_loss(samples.observations, samples.actions, self.draw_times[rows], self.draw_noises[rows])
                )
        self.old_cfm_losses = th.cat(losses)

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> FlowRolloutBufferSamples:
        samples = super()._get_samples(batch_inds, env)  # type: ignore[misc]
        if self.old_cfm_losses is None:  # draws not made yet: prepare_draws() is flattening the buffer
            return samples
        rows = th.as_tensor(batch_inds, device=self.device)
        return FlowRolloutBufferSamples(*samples, self.draw_times[rows], self.draw_noises[rows], self.old_cfm_losses[rows])


class FlowRolloutBuffer(FPODrawsMixin, RolloutBuffer):
    """SB3 RolloutBuffer with FPO's draws and old CFM losses."""


class FlowDictRolloutBuffer(FPODrawsMixin, DictRolloutBuffer):
    """SB3 DictRolloutBuffer with FPO's draws and old CFM losses."""


def fpo_log_ratio(old_cfm_losses: th.Tensor, new_cfm_losses: th.Tensor, ratio_mode: str) -> th.Tensor:
    """
    FPO's stand-in for ``log pi_new(a|s) - log pi_old(a|s)``: the decrease of the CFM loss on the same draws.

    :param old_cfm_losses: (batch, N) losses under the rollout policy
    :param new_cfm_losses: (batch, N) losses under the current policy
    :param ratio_mode: "per_action" (FPO: average over the N draws, one ratio per action) or "per_sample"
        (FPO++: one ratio per draw)
    :return: (batch,) or (batch, N)
    """
    if ratio_mode == "per_action":
        return old_cfm_losses.mean(dim=1) - new_cfm_losses.mean(dim=1)
    return old_cfm_losses - new_cfm_losses


class FlowPPO(FlowOnPolicyAlgorithm):
    """
    Flow Policy Optimization (McAllister et al., 2025, "Flow Matching Policy Gradients"; FPO++: "Flow Policy
    Optimization++"): PPO where the intractable likelihood ratio of a flow policy is replaced by
    ``exp(L_old - L_new)``, the exponentiated decrease of the conditional flow matching loss on N stored
    (time, noise) draws per action. Exploration comes from the random initial noise of the flow; deterministic
    prediction integrates from zero noise (FPO++ zero-sampling).

    :param policy: "MlpPolicy", "CnnPolicy", "MultiInputPolicy" or a FlowActorCriticPolicy class
    :param env: environment or its id
    :param learning_rate: actor learning rate (and critic's unless ``critic_learning_rate``), constant or schedule
    :param n_steps: steps per environment per rollout
    :param batch_size: minibatch size
    :param n_epochs: passes over each rollout
    :param gamma: discount factor
    :param gae_lambda: GAE lambda
    :param clip_range: PPO epsilon (FPO: 0.05; fine-tuning: 0.01-0.03)
    :param clip_range_vf: value clipping (None: none)
    :param normalize_advantage: normalize advantages per minibatch
    :param vf_coef: value-loss weight (FPO: 0.25)
    :param max_grad_norm: gradient-norm clipping
    :param target_kl: stop an update's epochs early when the approximate KL exceeds it
    :param n_mc_samples: N, (time, noise) draws per action (FPO: 8; FPO++ locomotion: 16)
    :param ratio_mode: "per_action" (FPO) or "per_sample" (FPO++)
    :param log_ratio_clamp: the log-ratio is clamped to [-c, c] before exp (FPO: 3; FPO++: 10)
    :param trust_region: "clip" or "aspo" (FPO++'s asymmetric version; its authors advise "clip" when fine-tuning)
    :param cfm_loss_clamp: per-draw CFM losses are clamped at this value (FPO++: 20; None: no clamp)
    :param cfm_loss_weighting: "velocity" (the plain CFM loss) or "noise" (each draw weighted by t^2: the error of the
        noise recovered from the predicted velocity, FPO's "u_but_supervise_as_eps" default), in the ratio
    :param time_sampling: "grid" (the policy's K sampling times, FPO's ``discretize_t_for_training``) or "uniform" (the
        default of FPO's MuJoCo Playground code)
    :param action_perturbation_std: std of Gaussian noise added to rollout actions in [-1, 1] units (FPO++: 0.02)
    :param n_flow_steps: integration steps K of the policy (overrides ``policy_kwargs``)
    :param base_policy: pretrained FlowPolicy (object, FlowBC model or path) to fine-tune
    :param critic_warmup_rollouts: rollouts during which only the value function learns
    :param critic_learning_rate: separate value-network learning rate (FPO++ fine-tuning: actor 1e-5, critic 1e-4)
    :param base_regularization_coef: weight of the squared distance to the base policy's deterministic action
    :param rollout_buffer_class: override the rollout buffer (must keep FPO's draws)
    :param rollout_buffer_kwargs: its keyword arguments
    :param stats_window_size: SB3 logging window
    :param tensorboard_log: tensorboard folder
    :param policy_kwargs: policy keyword arguments
    :param verbose: verbosity
    :param seed: random seed
    :param device: "auto", "cpu" or "cuda"
    :param _init_setup_model: build the networks now
    """

    default_rollout_buffer_classes = (FlowRolloutBuffer, FlowDictRolloutBuffer)
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": FlowActorCriticPolicy,
        "CnnPolicy": CnnFlowActorCriticPolicy,
        "MultiInputPolicy": MultiInputFlowActorCriticPolicy,
    }
    rollout_buffer: FlowRolloutBuffer | FlowDictRolloutBuffer

    def __init__(
        self,
        policy: str | type[FlowActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.05,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        vf_coef: float = 0.25,
        max_grad_norm: float = 0.5,
        target_kl: float | None = None,
        n_mc_samples: int = 8,
        ratio_mode: str = "per_action",
        log_ratio_clamp: float = 3.0,
        trust_region: str = "clip",
        cfm_loss_clamp: float | None = 20.0,
        cfm_loss_weighting: str = "velocity",
        time_sampling: str = "grid",
        action_perturbation_std: float = 0.0,
        n_flow_steps: int | None = None,
        base_policy: BaseFlowPolicySource | None = None,
        critic_warmup_rollouts: int = 0,
        critic_learning_rate: float | Schedule | None = None,
        base_regularization_coef: float = 0.0,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        self._check_options(n_mc_samples, ratio_mode, time_sampling, log_ratio_clamp, cfm_loss_clamp, cfm_loss_weighting)
        if not np.isfinite(action_perturbation_std) or action_perturbation_std < 0:
            raise ValueError(f"action_perturbation_std must be a finite number >= 0, got {action_perturbation_std}")
        policy_kwargs = dict(policy_kwargs or {})
        if n_flow_steps is not None:
            policy_kwargs["n_flow_steps"] = n_flow_steps
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=0.0,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            base_policy=base_policy,
            critic_warmup_rollouts=critic_warmup_rollouts,
            critic_learning_rate=critic_learning_rate,
            base_regularization_coef=base_regularization_coef,
            batch_size=batch_size,
            n_epochs=n_epochs,
            clip_range=clip_range,
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            target_kl=target_kl,
            trust_region=trust_region,
        )
        self.n_mc_samples = n_mc_samples
        self.ratio_mode = ratio_mode
        self.log_ratio_clamp = log_ratio_clamp
        self.cfm_loss_clamp = cfm_loss_clamp
        self.cfm_loss_weighting = cfm_loss_weighting
        self.time_sampling = time_sampling
        self.action_perturbation_std = action_perturbation_std
        if _init_setup_model:
            self._setup_model()

    @staticmethod
    def _check_options(
        n_mc_samples: int,
        ratio_mode: str,
        time_sampling: str,
        log_ratio_clamp: float,
        cfm_loss_clamp: float | None,
        cfm_loss_weighting: str,
    ) -> None:
        if isinstance(n_mc_samples, bool) or not isinstance(n_mc_samples, int) or n_mc_samples <= 0:
            raise ValueError(f"n_mc_samples must be a positive integer, got {n_mc_samples!r}")
        if ratio_mode not in RATIO_MODES:
            raise ValueError(f"ratio_mode must be one of {RATIO_MODES}, got {ratio_mode!r}")
        if time_sampling not in TIME_SAMPLING_MODES:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLING_MODES}, got {time_sampling!r}")
        if not np.isfinite(log_ratio_clamp) or log_ratio_clamp <= 0:
            raise ValueError(f"log_ratio_clamp must be a finite number > 0, got {log_ratio_clamp}")
        if cfm_loss_clamp is not None and (not np.isfinite(cfm_loss_clamp) or cfm_loss_clamp <= 0):
            raise ValueError(f"cfm_loss_clamp must be a finite number > 0 or None, got {cfm_loss_clamp}")
        if cfm_loss_weighting not in CFM_LOSS_WEIGHTINGS:
            raise ValueError(f"cfm_loss_weighting must be one of {CFM_LOSS_WEIGHTINGS}, got {cfm_loss_weighting!r}")

    def _setup_model(self) -> None:
        super()._setup_model()
        self.policy.action_perturbation_std = self.action_perturbation_std

    def _clamped(self, cfm_losses: th.Tensor) -> th.Tensor:
        return cfm_losses if self.cfm_loss_clamp is None else cfm_losses.clamp(max=self.cfm_loss_clamp)

    def _log_ratio_and_losses(self, samples: FlowRolloutBufferSamples, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Clamped FPO log-ratio of a minibatch and its new per-draw CFM losses."""
        new_losses = self.policy.cfm_loss_from_features(features, samples.actions, samples.times, samples.noises)
        weights = cfm_loss_weights(samples.times, self.cfm_loss_weighting)
        log_ratio = fpo_log_ratio(
            self._clamped(weights * samples.old_cfm_losses), self._clamped(weights * new_losses), self.ratio_mode
        )
        return log_ratio.clamp(-self.log_ratio_clamp, self.log_ratio_clamp), new_losses

    def policy_ratio(
        self, samples: FlowRolloutBufferSamples, features: th.Tensor | None = None
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        Ratio estimates of a minibatch under the current policy.

        :param samples: a minibatch of the rollout buffer
        :param features: the minibatch's observation features, when the caller already extracted them
        :return: (ratio, log_ratio, new per-draw CFM losses); ratio is (batch,) or (batch, N) by ``ratio_mode``
        """
        if features is None:
            features = self.policy.extract_features(samples.observations, self.policy.features_extractor)
        log_ratio, new_losses = self._log_ratio_and_losses(samples, features)
        return th.exp(log_ratio), log_ratio, new_losses

    def prepare_update(self) -> None:
        """FPO's N (t, noise) draws per action and their old CFM losses, fixed for the whole update."""
        self.rollout_buffer.prepare_draws(self.policy, self.n_mc_samples, self.time_sampling, self.batch_size)

    def policy_terms(self, samples: FlowRolloutBufferSamples, features: th.Tensor) -> PolicyTerms:
        # The shared update exponentiates the log-ratio itself.
        log_ratio, new_losses = self._log_ratio_and_losses(samples, features)
        return PolicyTerms(log_ratio=log_ratio, logs={"cfm_loss": new_losses.mean().item()})

    def learn(
        self: SelfFlowPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "FlowPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfFlowPPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
