"""FlowPPO: PPO for flow policies with FPO / FPO++ likelihood-ratio surrogates."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from sb3_flow.bases.on_policy import FlowOnPolicyAlgorithm, PolicyTerms, flatten_rollout_buffer, trust_region_surrogate
from sb3_flow.common.flow import CFM_LOSS_WEIGHTINGS, TIME_SAMPLING_MODES, cfm_loss_weights, sample_times
from sb3_flow.common.utils import check_finite_number, check_positive_finite, check_positive_int
from sb3_flow.policies.actor_critic import (
    CnnFlowActorCriticPolicy,
    FlowActorCriticPolicy,
    MultiInputFlowActorCriticPolicy,
)
from sb3_flow.policies.loading import BaseFlowPolicySource

SelfFlowPPO = TypeVar("SelfFlowPPO", bound="FlowPPO")

RATIO_MODES = ("per_action", "per_sample")
LOG_RATIO_CLAMP_MODES = ("hard", "straight_through")

__all__ = [
    "FlowDictRolloutBuffer",
    "FlowPPO",
    "FlowRolloutBuffer",
    "clamp_log_ratio",
    "fpo_log_ratio",
    "trust_region_surrogate",
]


class FlowRolloutBufferSamples(NamedTuple):
    observations: Any
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    times: th.Tensor
    noises: th.Tensor
    old_cfm_losses: th.Tensor | None  # None while FlowPPO.prepare_update computes them


class FPODrawsMixin:
    """
    Adds FPO's per-action (time, noise) draws and their old per-draw CFM losses to an SB3 rollout buffer.

    The draws do not depend on the rollout, so they are made once the rollout is complete (:meth:`make_draws`), and
    FlowPPO computes their old losses right after, before any gradient step: the same as making them at rollout time,
    without slowing the rollout down. The buffer's ``actions`` are the pre-clip actions the flow generated (see
    FlowActorCriticPolicy).
    """

    buffer_size: int
    n_envs: int
    device: th.device
    actions: np.ndarray
    draw_times: th.Tensor | None
    draw_noises: th.Tensor | None
    old_cfm_losses: th.Tensor | None

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self.draw_times = self.draw_noises = self.old_cfm_losses = None

    def make_draws(self, n_draws: int, time_sampling: str, n_grid_points: int) -> None:
        """
        Draw ``n_draws`` (t, noise) pairs for every row of the (flattened) rollout; ``old_cfm_losses`` is reset.

        :param n_draws: N
        :param time_sampling: a mode of :func:`~sb3_flow.common.flow.sample_times`
        :param n_grid_points: K, the policy's integration steps, for ``time_sampling="grid"``
        """
        flatten_rollout_buffer(self)  # type: ignore[arg-type]
        n_rows = self.buffer_size * self.n_envs
        self.old_cfm_losses = None
        self.draw_times = sample_times((n_rows, n_draws), time_sampling, n_grid_points, device=self.device)
        self.draw_noises = th.randn((n_rows, n_draws, self.actions.shape[-1]), device=self.device)

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> FlowRolloutBufferSamples:
        samples = super()._get_samples(batch_inds, env)  # type: ignore[misc]
        if self.draw_times is None or self.draw_noises is None:  # no draws yet: the buffer is being flattened
            return samples
        rows = th.as_tensor(batch_inds, device=self.device)
        old_cfm_losses = None if self.old_cfm_losses is None else self.old_cfm_losses[rows]
        return FlowRolloutBufferSamples(*samples, self.draw_times[rows], self.draw_noises[rows], old_cfm_losses)


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


def clamp_log_ratio(log_ratio: th.Tensor, clamp: float | None, mode: str) -> th.Tensor:
    """
    Bound a log-ratio before it is exponentiated.

    :param log_ratio: log-ratio estimates
    :param clamp: the bound c (None: no bound)
    :param mode: ``"hard"`` (FPO's per-sample clip to [-c, c]: no gradient beyond it) or ``"straight_through"``
        (FPO++: the value is ``min(L, c)``, bounded from above only, and the gradient is that of L everywhere, so a draw
        whose ratio grew past ``e^c`` under a negative advantage is still pushed back)
    :return: shaped like ``log_ratio``
    """
    if clamp is None:
        return log_ratio
    if mode == "hard":
        return log_ratio.clamp(-clamp, clamp)
    if mode == "straight_through":
        return log_ratio - (log_ratio - log_ratio.clamp(max=clamp)).detach()
    raise ValueError(f"log_ratio_clamp_mode must be one of {LOG_RATIO_CLAMP_MODES}, got {mode!r}")


class FlowPPO(FlowOnPolicyAlgorithm):
    """
    Flow Policy Optimization (FPO, McAllister et al., 2025, "Flow Matching Policy Gradients", and its successor FPO++):
    PPO where the intractable likelihood ratio of a flow policy is replaced by ``exp(L_old - L_new)``, the
    exponentiated decrease of the conditional flow matching loss on N stored (time, noise) draws per action.
    Exploration comes from the random initial noise of the flow; deterministic prediction integrates from zero noise
    (FPO++ zero-sampling).

    Paper (FPO): https://arxiv.org/abs/2507.21053
    Reference implementation (FPO): https://github.com/akanazawa/fpo
    Reference implementation (FPO++): https://github.com/amazon-far/fpo-control

    The defaults are FPO's (one ratio per action, clip 0.05, value coefficient 0.25). FPO++'s settings:
    ``ratio_mode="per_sample", log_ratio_clamp=10.0, log_ratio_clamp_mode="straight_through", cfm_loss_clamp=20.0,
    action_perturbation_std=0.02`` (and ``trust_region="aspo"`` from scratch).

    :param policy: "MlpPolicy", "CnnPolicy", "MultiInputPolicy" or a FlowActorCriticPolicy class
    :param env: environment or its id
    :param learning_rate: actor learning rate (and critic's unless ``critic_learning_rate``), constant or schedule
    :param n_steps: steps per environment per rollout
    :param batch_size: minibatch size
    :param n_epochs: passes over each rollout
    :param gamma: discount factor
    :param gae_lambda: GAE lambda
    :param clip_range: PPO epsilon, > 0 (FPO: 0.05; fine-tuning: 0.01-0.03)
    :param clip_range_vf: value clipping (None: none)
    :param normalize_advantage: normalize advantages per minibatch
    :param vf_coef: value-loss weight (FPO: 0.25)
    :param max_grad_norm: gradient-norm clipping
    :param target_kl: stop an update's epochs early when the approximate KL exceeds 1.5x this
    :param n_mc_samples: N, (time, noise) draws per action (FPO: 8; FPO++ locomotion: 16)
    :param ratio_mode: "per_action" (FPO) or "per_sample" (FPO++, and FPO's per-sample variant)
    :param log_ratio_clamp: the bound c of the log-ratio before exp (FPO per-sample: 3; FPO++: 10; None: no bound, as
        FPO's per-action code)
    :param log_ratio_clamp_mode: "hard" (FPO: clip to [-c, c]) or "straight_through" (FPO++: ``min(L, c)`` with L's
        gradient), see :func:`clamp_log_ratio`
    :param trust_region: "clip" or "aspo" (FPO++'s asymmetric version; its authors advise "clip" when fine-tuning)
    :param cfm_loss_clamp: per-draw CFM losses are clamped at this value (FPO++: 20; None: no clamp, as FPO's code)
    :param cfm_loss_weighting: "velocity" (the plain CFM loss) or "noise" (each draw weighted by t^2: the error of the
        noise recovered from the predicted velocity, FPO's "u_but_supervise_as_eps" default), in the ratio
    :param time_sampling: "grid" (the policy's K sampling times, FPO's ``discretize_t_for_training``), "uniform" (the
        default of FPO's MuJoCo Playground code) or "beta"
    :param action_perturbation_std: std of Gaussian noise added to rollout actions in [-1, 1] units (FPO++: 0.02)
    :param n_flow_steps: integration steps K of the policy (default: ``policy_kwargs``'s, else the base policy's, else
        10)
    :param base_policy: pretrained FlowPolicy (object, FlowBC model or path) to fine-tune; only its flow is taken (a
        copy): the value network starts fresh
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
        log_ratio_clamp: float | None = 3.0,
        log_ratio_clamp_mode: str = "hard",
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
        n_mc_samples = check_positive_int(n_mc_samples, "n_mc_samples")
        self._check_options(
            ratio_mode, time_sampling, log_ratio_clamp, log_ratio_clamp_mode, cfm_loss_clamp, cfm_loss_weighting
        )
        action_perturbation_std = check_finite_number(action_perturbation_std, "action_perturbation_std", minimum=0)
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
            n_flow_steps=n_flow_steps,
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
        self.log_ratio_clamp = None if log_ratio_clamp is None else float(log_ratio_clamp)
        self.log_ratio_clamp_mode = log_ratio_clamp_mode
        self.cfm_loss_clamp = cfm_loss_clamp
        self.cfm_loss_weighting = cfm_loss_weighting
        self.time_sampling = time_sampling
        self.action_perturbation_std = action_perturbation_std
        if _init_setup_model:
            self._setup_model()

    @staticmethod
    def _check_options(
        ratio_mode: str,
        time_sampling: str,
        log_ratio_clamp: float | None,
        log_ratio_clamp_mode: str,
        cfm_loss_clamp: float | None,
        cfm_loss_weighting: str,
    ) -> None:
        if ratio_mode not in RATIO_MODES:
            raise ValueError(f"ratio_mode must be one of {RATIO_MODES}, got {ratio_mode!r}")
        if time_sampling not in TIME_SAMPLING_MODES:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLING_MODES}, got {time_sampling!r}")
        if log_ratio_clamp is not None:
            check_positive_finite(log_ratio_clamp, "log_ratio_clamp (None: no bound)")
        if log_ratio_clamp_mode not in LOG_RATIO_CLAMP_MODES:
            raise ValueError(f"log_ratio_clamp_mode must be one of {LOG_RATIO_CLAMP_MODES}, got {log_ratio_clamp_mode!r}")
        if cfm_loss_clamp is not None:
            check_positive_finite(cfm_loss_clamp, "cfm_loss_clamp (None: no clamp)")
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
        return clamp_log_ratio(log_ratio, self.log_ratio_clamp, self.log_ratio_clamp_mode), new_losses

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
        buffer = self.rollout_buffer
        buffer.make_draws(self.n_mc_samples, self.time_sampling, self.policy.n_flow_steps)
        buffer.old_cfm_losses = self.map_rollout(
            lambda samples: self.policy.cfm_loss(samples.observations, samples.actions, samples.times, samples.noises)
        )

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
