"""What the on-policy flow algorithms (FlowPPO, ReinFlow) share on top of SB3's OnPolicyAlgorithm.

- the PPO update (advantage normalization, clipped surrogate, value loss and clipping, target_kl early stop,
  logging); each algorithm supplies only its likelihood-ratio estimate through :meth:`policy_terms`;
- a no-grad pass over the whole rollout in minibatch-sized chunks (:meth:`map_rollout`), for the old likelihood terms
  each algorithm computes once per update;
- base-policy hand-off: start the actor from a pretrained FlowPolicy (object, FlowBC model or path), with its
  architecture, after checking its spaces against the environment; the value network always starts fresh;
- the algorithms' own policy options are passed to the policy beside ``policy_kwargs``, which stays what the user
  passed (so ``load(path, policy_kwargs=...)`` with the constructor's arguments works as in SB3);
- critic warm-up: for the first M rollouts only the value function learns, so that a random critic does not wreck a
  good actor;
- a separate critic learning rate (FPO++ and ReinFlow fine-tune the actor 10x slower than the critic);
- an optional regularizer toward the base policy's deterministic action (ReinFlow's BC regularizer);
- a non-finite learning rate, loss or gradient stops training with an error before the optimizer step that would have
  used it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
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

from sb3_flow.common.files import ModelFileMixin
from sb3_flow.common.flow import check_n_flow_steps
from sb3_flow.common.utils import (
    FloatSchedule,
    check_box_action_space,
    check_finite_learning_rate,
    check_finite_loss,
    check_finite_number,
    check_positive_finite,
    check_positive_int,
    fused_adam_kwargs,
)
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


def flatten_rollout_buffer(buffer: RolloutBuffer) -> None:
    """
    Let SB3 swap and flatten the buffer's (n_steps, n_envs) axes into one, which its ``get`` does lazily on first use;
    afterwards row ``i`` of every array is the same transition.
    """
    if not buffer.generator_ready:
        next(buffer.get(batch_size=1))


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


class FlowOnPolicyAlgorithm(ModelFileMixin, OnPolicyAlgorithm):
    """
    Base class of the on-policy flow algorithms: SB3's PPO update with the likelihood ratio left to each algorithm (see
    the module docstring for what it adds to SB3).

    Paper (PPO): https://arxiv.org/abs/1707.06347
    Reference implementation (the update it follows): https://github.com/DLR-RM/stable-baselines3 (``ppo/ppo.py``)

    :param base_policy: pretrained FlowPolicy, model holding one (FlowBC) or path; None trains from scratch
    :param n_flow_steps: integration steps K of the policy (None: ``policy_kwargs``'s, else the base policy's, else
        :attr:`default_n_flow_steps` or the policy's default)
    :param critic_warmup_rollouts: rollouts during which only the value function is trained
    :param critic_learning_rate: learning rate of the value network (None: the same as the actor's)
    :param base_regularization_coef: weight of ``||a(s, x0=0) - a_base(s, x0=0)||^2`` (needs backpropagation through
        the K integration steps; 0 disables it)
    :param batch_size: minibatch size of the PPO update
    :param n_epochs: passes over each rollout
    :param clip_range: PPO epsilon (> 0), constant or schedule
    :param clip_range_vf: value clipping (None: none)
    :param normalize_advantage: normalize advantages per minibatch
    :param target_kl: stop an update's epochs early when the approximate KL exceeds 1.5x this
    :param trust_region: "clip" (PPO) or "aspo" (FPO++)
    """

    policy: FlowActorCriticPolicy
    # (flat observations, Dict observations) rollout buffers used when the user names none
    default_rollout_buffer_classes: tuple[type[RolloutBuffer], type[RolloutBuffer]] = (RolloutBuffer, DictRolloutBuffer)
    # Integration steps from scratch when neither the user nor a base policy says (None: the policy's default)
    default_n_flow_steps: int | None = None
    # Networks from scratch when policy_kwargs does not say: SB3 PPO's sizes (64-64 actor and critic), so that
    # FlowPPO("MlpPolicy", env) and PPO("MlpPolicy", env) compare like for like (issue 16: the FlowPolicy default,
    # 3x256, ran at 0.15x PPO's steps/s). A base policy brings its own actor shape.
    from_scratch_architecture: dict[str, list[int]] = {"net_arch": [64, 64], "value_net_arch": [64, 64]}

    def __init__(
        self,
        *args: Any,
        base_policy: BaseFlowPolicySource | None = None,
        n_flow_steps: int | None = None,
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
        batch_size = check_positive_int(batch_size, "batch_size")
        if normalize_advantage and batch_size <= 1:
            # As SB3's PPO: a minibatch of one has no spread to normalize by.
            raise ValueError(f"batch_size must be > 1 when normalize_advantage=True (got {batch_size})")
        if trust_region not in TRUST_REGIONS:
            raise ValueError(f"trust_region must be one of {TRUST_REGIONS}, got {trust_region!r}")
        if not callable(clip_range):
            check_positive_finite(clip_range, "clip_range")
        if clip_range_vf is not None and not callable(clip_range_vf):
            check_positive_finite(clip_range_vf, "clip_range_vf (None disables value clipping)")
        self._base_policy_source = base_policy
        self.n_flow_steps = None if n_flow_steps is None else check_n_flow_steps(n_flow_steps)
        self.critic_warmup_rollouts = check_positive_int(critic_warmup_rollouts, "critic_warmup_rollouts", minimum=0)
        self.critic_learning_rate = critic_learning_rate
        self.base_regularization_coef = check_finite_number(base_regularization_coef, "base_regularization_coef", minimum=0)
        self.n_rollouts = 0
        self.reference_policy: FlowPolicy | None = None
        # The base policy's architecture (saved: a loaded model has no base policy source) and the arguments the
        # policy was built with (saved: load_flow_policy rebuilds the policy of a model zip from them, under the name
        # BUILT_POLICY_KWARGS_KEY).
        self.base_architecture: dict[str, Any] | None = None
        self.built_policy_kwargs: dict[str, Any] | None = None
        # Flow policies explore through their own noise: no gSDE; the action space is checked in _setup_model.
        super().__init__(
            *args, use_sde=False, sde_sample_freq=-1, supported_action_spaces=None, _init_setup_model=False, **kwargs
        )
        self.n_steps = check_positive_int(self.n_steps, "n_steps")
        self.batch_size = batch_size
        self.n_epochs = check_positive_int(n_epochs, "n_epochs")
        self.clip_range = clip_range
        self.clip_range_vf = clip_range_vf
        self.normalize_advantage = normalize_advantage
        self.target_kl = target_kl
        self.trust_region = trust_region
        if self.env is not None:
            self._check_rollout_size()

    def _check_rollout_size(self) -> None:
        """SB3's PPO checks on the rollout size against the minibatch size, with its messages."""
        buffer_size = self.env.num_envs * self.n_steps
        if self.normalize_advantage and buffer_size <= 1:
            raise ValueError(
                f"n_steps * n_envs must be > 1 when normalize_advantage=True (n_steps={self.n_steps}, "
                f"n_envs={self.env.num_envs})"
            )
        if buffer_size % self.batch_size > 0:
            warnings.warn(
                f"You have specified a mini-batch size of {self.batch_size}, but because the `RolloutBuffer` is of size "
                f"`n_steps * n_envs = {buffer_size}`, after every {buffer_size // self.batch_size} untruncated "
                f"mini-batches, there will be a truncated mini-batch of size {buffer_size % self.batch_size}\n"
                "We recommend using a `batch_size` that is a factor of `n_steps * n_envs`.\n"
                f"Info: (n_steps={self.n_steps} and n_envs={self.env.num_envs})",
                stacklevel=4,  # the user's call: through the algorithm's and this base's __init__
            )

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_base_policy_source", "reference_policy"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        if self.reference_policy is not None:
            state_dicts = [*state_dicts, "reference_policy"]
        return state_dicts, variables

    def _adopt_base_policy(self) -> FlowPolicy | None:
        """Load the base policy (a copy holding only its flow), check its spaces, and keep its architecture."""
        if self._base_policy_source is None:
            return None
        base = load_flow_policy(self._base_policy_source, self.device, self.observation_space, self.action_space)
        architecture = base._get_constructor_parameters()
        self.base_architecture = {key: architecture[key] for key in (*ACTOR_ARCHITECTURE_KEYS, "n_flow_steps")}
        return base

    def policy_options(self) -> dict[str, Any]:
        """The algorithm's own keyword arguments for its policy (e.g. ReinFlow's noise model), beside ``policy_kwargs``."""
        return {}

    def _policy_build_kwargs(self) -> dict[str, Any]:
        """
        ``policy_kwargs``, with the base policy's architecture (it wins: its weights must fit) and the algorithm's
        options. Integration steps: ``n_flow_steps``, else ``policy_kwargs``'s, else the base's, else the default.
        """
        kwargs = dict(self.policy_kwargs)
        if self.base_architecture is not None:
            kwargs.update({key: self.base_architecture[key] for key in ACTOR_ARCHITECTURE_KEYS})
            kwargs.setdefault("n_flow_steps", self.base_architecture["n_flow_steps"])
        elif not self._loading_a_zip_without_architecture():
            for key, sizes in self.from_scratch_architecture.items():
                kwargs.setdefault(key, list(sizes))
        kwargs.update(self.policy_options())
        if self.n_flow_steps is not None:
            kwargs["n_flow_steps"] = self.n_flow_steps
        elif self.default_n_flow_steps is not None:
            kwargs.setdefault("n_flow_steps", self.default_n_flow_steps)
        return kwargs

    def _loading_a_zip_without_architecture(self) -> bool:
        """
        True while ``load`` rebuilds a model saved before the from-scratch sizes were recorded: its policy was built
        with the policy's own defaults, which must be used again for its weights to fit.
        """
        saved = self.built_policy_kwargs  # None when constructing; the saved value when load() calls _setup_model
        return saved is not None and "net_arch" not in saved

    def _setup_model(self) -> None:
        check_box_action_space(self.action_space, type(self).__name__)
        if self.rollout_buffer_class is None:
            self.rollout_buffer_class = self.default_rollout_buffer_classes[isinstance(self.observation_space, spaces.Dict)]
        base = self._adopt_base_policy()
        self.built_policy_kwargs = self._policy_build_kwargs()
        # SB3 builds the policy from self.policy_kwargs: it gets the full arguments for that call only, so that
        # policy_kwargs stays what the user passed (SB3's load compares it with the stored one).
        user_policy_kwargs = self.policy_kwargs
        self.policy_kwargs = self.built_policy_kwargs
        try:
            super()._setup_model()
        finally:
            self.policy_kwargs = user_policy_kwargs
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
            **fused_adam_kwargs(policy.optimizer_class, policy.optimizer_kwargs),
        )

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        """
        Set the scheduled learning rates (the critic's on its own parameter group), after checking that the schedules
        returned finite numbers >= 0: an optimizer step with a NaN learning rate writes NaN into every weight.
        """
        progress = self._current_progress_remaining
        name = type(self).__name__
        actor_lr = check_finite_learning_rate(self.lr_schedule(progress), name, progress)
        critic_lr = None
        if self.critic_lr_schedule is not None:
            critic_lr = check_finite_learning_rate(self.critic_lr_schedule(progress), f"{name} (critic)", progress)
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in optimizer.param_groups:
                group["lr"] = actor_lr
        self.logger.record("train/learning_rate", actor_lr)
        if critic_lr is not None:
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

    def map_rollout(self, function: Callable[[Any], th.Tensor]) -> th.Tensor:
        """
        ``function`` on every row of the last rollout, without autograd, in chunks of ``batch_size`` rows taken in
        order; the results joined along the first axis (row ``i`` of the result belongs to row ``i`` of the flattened
        buffer). Chunks of the update's minibatch size give the same numerics as the update's own re-evaluation, so a
        ratio against the result is exactly 1 before the first step.

        :param function: minibatch of the rollout buffer (its ``_get_samples``) -> tensor with one row per sample
        """
        buffer = self.rollout_buffer
        flatten_rollout_buffer(buffer)
        n_rows = buffer.buffer_size * buffer.n_envs
        with th.no_grad():
            return th.cat(
                [
                    function(buffer._get_samples(np.arange(start, min(start + self.batch_size, n_rows))))
                    for start in range(0, n_rows, self.batch_size)
                ]
            )

    def prepare_update(self) -> None:
        """Called once per update, after the rollout and before the first gradient step (e.g. to fix FPO's draws)."""

    def policy_terms(self, samples: Any, features: th.Tensor) -> PolicyTerms:
        """
        The algorithm's likelihood-ratio estimate for a minibatch under the current policy.

        :param samples: a minibatch of the rollout buffer
        :param features: the minibatch's observation features (shared with the critic)
        """
        raise NotImplementedError

    def _positive_from_schedule(self, schedule: Schedule, name: str) -> float:
        """The schedule's value for this update, which must be a finite number > 0 (a constant was checked already)."""
        progress = self._current_progress_remaining
        return check_positive_finite(schedule(progress), f"{name} (its schedule's value at progress_remaining={progress:.4f})")

    def _step(self, loss: th.Tensor) -> None:
        """One optimizer step on a finite loss whose gradient is finite; otherwise an error before the step."""
        name = type(self).__name__
        check_finite_loss(loss, name, "loss", self._n_updates)
        self.policy.optimizer.zero_grad()
        loss.backward()
        gradient_norm = th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        if not th.isfinite(gradient_norm):
            raise FloatingPointError(
                f"{name}: the gradient norm is {gradient_norm.item()} at update {self._n_updates} although the loss was "
                "finite; no optimizer step was taken with it (lower the learning rate, or check rewards and observations "
                "for very large values)"
            )
        self.policy.optimizer.step()

    def train(self) -> None:
        """One PPO update over ``n_epochs`` passes of minibatches of the last rollout, on :meth:`policy_terms`."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self._positive_from_schedule(self.clip_range, "clip_range")
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self._positive_from_schedule(self.clip_range_vf, "clip_range_vf")
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
                self._step(loss)
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
