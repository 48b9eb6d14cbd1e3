"""What the on-policy flow algorithms (FlowPPO, ReinFlow) share on top of SB3's OnPolicyAlgorithm.

- the PPO update (advantage normalization, clipped surrogate, value loss and clipping, target_kl early stop,
  logging); each algorithm supplies only its likelihood-ratio estimate through :meth:`policy_terms`;
- base-policy hand-off: start the actor from a pretrained FlowPolicy (object, FlowBC model or path), with its
  architecture, after checking its spaces against the environment;
- critic warm-up: for the first M rollouts only the value function learns, so that a random critic does not wreck a
  good actor;
- a separate critic learning rate (FPO++ and ReinFlow fine-tune the actor 10x slower than the critic);
- an optional regularizer toward the base policy's deterministic action (ReinFlow's BC regularizer);
- non-finite losses stop training with an error instead of reaching the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from sb3_flow.common.files import AtomicSaveMixin
from sb3_flow.common.utils import FloatSchedule, check_box_action_space, check_finite_loss
from sb3_flow.policies.actor_critic import FlowActorCriticPolicy
from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.policies.loading import BaseFlowPolicySource, load_flow_policy

# Constructor arguments that define the actor's architecture: taken from the base policy when one is given.
ACTOR_ARCHITECTURE_KEYS = (
    "net_arch",
    "activation_fn",
    "time_embedding_dim",
    "integration_method",
    "features_extractor_class",
    "features_extractor_kwargs",
    "normalize_images",
)


TRUST_REGIONS = ("clip", "aspo")


def trust_region_surrogate(ratio: th.Tensor, advantages: th.Tensor, clip_range: float, trust_region: str) -> th.Tensor:
    """
    Per-element surrogate objective to maximize.

    :param ratio: likelihood-ratio estimates
    :param advantages: broadcastable to ``ratio``
    :param clip_range: epsilon
    :param trust_region: "clip" (PPO) or "aspo" (FPO++: PPO clip where A > 0, the SPO penalty
        ``A r - |A| (r - 1)^2 / (2 eps)`` where A < 0)
    """
    clipped = th.min(ratio * advantages, th.clamp(ratio, 1 - clip_range, 1 + clip_range) * advantages)
    if trust_region == "clip":
        return clipped
    spo = ratio * advantages - advantages.abs() * (ratio - 1).pow(2) / (2 * clip_range)
    return th.where(advantages >= 0, clipped, spo)


@dataclass
class PolicyTerms:
    """
    What an algorithm's :meth:`FlowOnPolicyAlgorithm.policy_terms` gives the shared PPO update for one minibatch.

    :param log_ratio: estimate of ``log pi_new - log pi_old``, (batch,) or (batch, n_draws), already clamped
    :param entropy: per-sample entropy estimate to reward with ``ent_coef`` (None: no entropy term)
    :param logs: extra scalars to average over the update and log under ``train/``
    """

    log_ratio: th.Tensor
    entropy: th.Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)


class FlowOnPolicyAlgorithm(AtomicSaveMixin, OnPolicyAlgorithm):
    """
    Base class of the on-policy flow algorithms. See the module docstring for what it adds to SB3.

    :param base_policy: pretrained FlowPolicy, model holding one (FlowBC) or path; None trains from scratch
    :param critic_warmup_rollouts: rollouts during which only the value function is trained
    :param critic_learning_rate: learning rate of the value network (None: the same as the actor's)
    :param base_regularization_coef: weight of ``||a(s, x0=0) - a_base(s, x0=0)||^2`` (needs backpropagation through
        the K integration steps; 0 disables it)
    :param batch_size: minibatch size of the PPO update
    :param n_epochs: passes over each rollout
    :param clip_range: PPO epsilon, constant or schedule
    :param clip_range_vf: value clipping (None: none)
    :param normalize_advantage: normalize advantages per minibatch
    :param target_kl: stop an update's epochs early when the approximate KL exceeds 1.5x this
    :param trust_region: "clip" (PPO) or "aspo" (FPO++)
    """

    policy: FlowActorCriticPolicy
    # (flat observations, Dict observations) rollout buffers used when the user names none
    default_rollout_buffer_classes: tuple[type[RolloutBuffer], type[RolloutBuffer]] = (RolloutBuffer, DictRolloutBuffer)

    def __init__(
        self,
        *args: Any,
        base_policy: BaseFlowPolicySource | None = None,
        critic_warmup_rollouts: int = 0,
        critic_learning_rate: float | Schedule | None = None,
        base_regularization_coef: float = 0.0,
        batch_size: int = 64,
        n_epochs: int = 10,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        target_kl: float | None = None,
        trust_region: str = "clip",
        **kwargs: Any,
    ):
        if batch_size <= 1:
            raise ValueError(f"batch_size must be > 1 (advantages are normalized per minibatch), got {batch_size}")
        if trust_region not in TRUST_REGIONS:
            raise ValueError(f"trust_region must be one of {TRUST_REGIONS}, got {trust_region!r}")
        if critic_warmup_rollouts < 0:
            raise ValueError(f"critic_warmup_rollouts must be >= 0, got {critic_warmup_rollouts}")
        if not np.isfinite(base_regularization_coef) or base_regularization_coef < 0:
            raise ValueError(f"base_regularization_coef must be a finite number >= 0, got {base_regularization_coef}")
        self._base_policy_source = base_policy
        self.critic_warmup_rollouts = critic_warmup_rollouts
        self.critic_learning_rate = critic_learning_rate
        self.base_regularization_coef = base_regularization_coef
        self.n_rollouts = 0
        self.reference_policy: FlowPolicy | None = None
        # Flow policies explore through their own noise: no gSDE; the action space is checked in _setup_model.
        super().__init__(
            *args, use_sde=False, sde_sample_freq=-1, supported_action_spaces=None, _init_setup_model=False, **kwargs
        )
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range
        self.clip_range_vf = clip_range_vf
        self.normalize_advantage = normalize_advantage
        self.target_kl = target_kl
        self.trust_region = trust_region

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_base_policy_source", "reference_policy"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        if self.reference_policy is not None:
            state_dicts = [*state_dicts, "reference_policy"]
        return state_dicts, variables

    def _adopt_base_policy(self) -> FlowPolicy | None:
        """Load the base policy, check its spaces, and make its architecture the actor's."""
        if self._base_policy_source is None:
            return None
        base = load_flow_policy(self._base_policy_source, self.device, self.observation_space, self.action_space)
        architecture = base._get_constructor_parameters()
        self.policy_kwargs = dict(self.policy_kwargs)
        for key in ACTOR_ARCHITECTURE_KEYS:
            self.policy_kwargs[key] = architecture[key]
        self.policy_kwargs.setdefault("n_flow_steps", base.n_flow_steps)
        return base

    def _setup_model(self) -> None:
        check_box_action_space(self.action_space, type(self).__name__)
        if self.rollout_buffer_class is None:
            self.rollout_buffer_class = self.default_rollout_buffer_classes[isinstance(self.observation_space, spaces.Dict)]
        base = self._adopt_base_policy()
        super()._setup_model()
        if not isinstance(self.policy, FlowActorCriticPolicy):
            raise TypeError(f"{type(self).__name__} needs a FlowActorCriticPolicy, got {type(self.policy).__name__}")
        if base is not None:
            missing, unexpected = self.policy.load_state_dict(base.state_dict(), strict=False)
            if unexpected or any(not key.startswith(self.policy.extra_state_prefixes) for key in missing):
                raise ValueError(f"base policy weights do not fit the actor: missing {missing}, unexpected {unexpected}")
        self._setup_critic_optimizer()
        if self.base_regularization_coef > 0:
            self.reference_policy = self._frozen_actor_copy()
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            if isinstance(self.clip_range_vf, (float, int)) and self.clip_range_vf <= 0:
                raise ValueError("clip_range_vf must be positive (or None to disable value clipping)")
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)

    def _frozen_actor_copy(self) -> FlowPolicy:
        reference = FlowPolicy(**self.policy.flow_policy_parameters()).to(self.device)
        reference.load_state_dict(self.policy.state_dict(), strict=False)
        reference.set_training_mode(False)
        for parameter in reference.parameters():
            parameter.requires_grad_(False)
        return reference

    def _setup_critic_optimizer(self) -> None:
        self.critic_lr_schedule = None if self.critic_learning_rate is None else FloatSchedule(self.critic_learning_rate)
        if self.critic_lr_schedule is None:
            return
        policy = self.policy
        policy.optimizer = policy.optimizer_class(
            [
                {"params": policy.actor_parameters()},
                {"params": list(policy.value_net.parameters()), "lr": self.critic_lr_schedule(1)},
            ],
            lr=self.lr_schedule(1),
            **policy.optimizer_kwargs,
        )

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)
        if self.critic_lr_schedule is not None:
            critic_lr = self.critic_lr_schedule(self._current_progress_remaining)
            self.policy.optimizer.param_groups[1]["lr"] = critic_lr
            self.logger.record("train/critic_learning_rate", critic_lr)

    @property
    def in_critic_warmup(self) -> bool:
        """True while only the value function is trained (``n_rollouts`` counts the rollouts collected so far)."""
        return self.n_rollouts <= self.critic_warmup_rollouts

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        complete = super().collect_rollouts(*args, **kwargs)
        if complete:
            self.n_rollouts += 1
        return complete

    def base_regularization(self, observations: Any) -> th.Tensor:
        """``mean ||a(s, x0=0) - a_ref(s, x0=0)||^2`` through the integration (ReinFlow's BC regularizer)."""
        assert self.reference_policy is not None
        with th.no_grad():
            target = self.reference_policy.integrate(observations, deterministic=True).actions
        actions = self.policy.integrate(observations, deterministic=True).actions
        return (actions - target).pow(2).sum(dim=-1).mean()

    def values_and_features(self, observations: Any) -> tuple[th.Tensor, th.Tensor]:
        """Values (batch,) and features; during critic warm-up the value loss does not reach the shared extractor."""
        features = self.policy.extract_features(observations, self.policy.features_extractor)
        value_features = features.detach() if self.in_critic_warmup else features
        return self.policy.value_net(value_features).flatten(), features

    def prepare_update(self) -> None:
        """Called once per update, after the rollout and before the first gradient step (e.g. to fix FPO's draws)."""

    def policy_terms(self, samples: Any, features: th.Tensor) -> PolicyTerms:
        """
        The algorithm's likelihood-ratio estimate for a minibatch under the current policy.

        :param samples: a minibatch of the rollout buffer
        :param features: the minibatch's observation features (shared with the critic)
        """
        raise NotImplementedError

    def train(self) -> None:
        """One PPO update over ``n_epochs`` passes of minibatches of the last rollout, on :meth:`policy_terms`."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(self._current_progress_remaining)
        self.prepare_update()
        warmup = self.in_critic_warmup

        stats: dict[str, list[float]] = {}

        def record(name: str, value: float) -> None:
            stats.setdefault(name, []).append(value)

        continue_training = True
        for epoch in range(self.n_epochs):
            for samples in self.rollout_buffer.get(self.batch_size):
                advantages = samples.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                # Features once per minibatch, shared by the critic and the actor's terms.
                values, features = self.values_and_features(samples.observations)
                if clip_range_vf is not None:
                    values = samples.old_values + th.clamp(values - samples.old_values, -clip_range_vf, clip_range_vf)
                value_loss = F.mse_loss(samples.returns, values)
                loss = self.vf_coef * value_loss

                if not warmup:
                    terms = self.policy_terms(samples, features)
                    ratio = th.exp(terms.log_ratio)
                    if ratio.dim() == 2:
                        advantages = advantages.unsqueeze(1)
                    policy_loss = -trust_region_surrogate(ratio, advantages, clip_range, self.trust_region).mean()
                    loss = loss + policy_loss
                    if terms.entropy is not None:
                        entropy_loss = -terms.entropy.mean()
                        loss = loss + self.ent_coef * entropy_loss
                        record("entropy_loss", entropy_loss.item())
                    with th.no_grad():
                        approx_kl = th.mean((ratio - 1) - terms.log_ratio).item()
                    record("policy_gradient_loss", policy_loss.item())
                    record("ratio", ratio.mean().item())
                    record("clip_fraction", th.mean((th.abs(ratio - 1) > clip_range).float()).item())
                    record("approx_kl", approx_kl)
                    for name, value in terms.logs.items():
                        record(name, value)
                    if self.reference_policy is not None:
                        regularization = self.base_regularization(samples.observations)
                        loss = loss + self.base_regularization_coef * regularization
                        record("base_regularization", regularization.item())
                    if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                        continue_training = False
                        if self.verbose >= 1:
                            print(f"Early stopping at epoch {epoch} due to reaching max kl: {approx_kl:.4f}")
                        break
                record("value_loss", value_loss.item())
                check_finite_loss(loss, type(self).__name__, "loss", self._n_updates)
                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            self._n_updates += 1
            if not continue_training:
                break

        for name, values in stats.items():
            self.logger.record(f"train/{name}", float(np.mean(values)))
        flat_values = self.rollout_buffer.values.flatten()
        flat_returns = self.rollout_buffer.returns.flatten()
        self.logger.record("train/explained_variance", explained_variance(flat_values, flat_returns))
        self.logger.record("train/critic_warmup", int(warmup))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
