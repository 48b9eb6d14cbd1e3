"""What the on-policy flow algorithms (FlowPPO, ReinFlow) share on top of SB3's OnPolicyAlgorithm.

- base-policy hand-off: start the actor from a pretrained FlowPolicy (object, FlowBC model or path), with its
  architecture, after checking its spaces against the environment;
- critic warm-up: for the first M rollouts only the value function learns, so that a random critic does not wreck a
  good actor;
- a separate critic learning rate (FPO++ and ReinFlow fine-tune the actor 10x slower than the critic);
- an optional regularizer toward the base policy's deterministic action (ReinFlow's BC regularizer);
- non-finite losses stop training with an error instead of reaching the weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import Schedule

from sb3_flow.common.utils import FloatSchedule, check_box_action_space
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


def check_finite_loss(loss: th.Tensor, algorithm: str, what: str, n_updates: int) -> None:
    """
    :raises FloatingPointError: when ``loss`` is NaN or infinite, before it can reach the weights
    """
    if not th.isfinite(loss).all():
        raise FloatingPointError(
            f"{algorithm}: the {what} is {loss.detach().cpu().numpy()} at update {n_updates}; the weights were left "
            "unchanged (lower the learning rate, check rewards and observations for NaN/inf, or normalize them)"
        )


class FlowOnPolicyAlgorithm(OnPolicyAlgorithm):
    """
    Base class of the on-policy flow algorithms. See the module docstring for what it adds to SB3.

    :param base_policy: pretrained FlowPolicy, model holding one (FlowBC) or path; None trains from scratch
    :param critic_warmup_rollouts: rollouts during which only the value function is trained
    :param critic_learning_rate: learning rate of the value network (None: the same as the actor's)
    :param base_regularization_coef: weight of ``||a(s, x0=0) - a_base(s, x0=0)||^2`` (needs backpropagation through
        the K integration steps; 0 disables it)
    """

    policy: FlowActorCriticPolicy

    def __init__(
        self,
        *args: Any,
        base_policy: BaseFlowPolicySource | None = None,
        critic_warmup_rollouts: int = 0,
        critic_learning_rate: float | Schedule | None = None,
        base_regularization_coef: float = 0.0,
        **kwargs: Any,
    ):
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
        super().__init__(*args, **kwargs)

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
        base = self._adopt_base_policy()
        super()._setup_model()
        if not isinstance(self.policy, FlowActorCriticPolicy):
            raise TypeError(f"{type(self).__name__} needs a FlowActorCriticPolicy, got {type(self.policy).__name__}")
        if base is not None:
            missing, unexpected = self.policy.load_state_dict(base.state_dict(), strict=False)
            if unexpected or any(not key.startswith("value_net.") for key in missing):
                raise ValueError(f"base policy weights do not fit the actor: missing {missing}, unexpected {unexpected}")
        self._setup_critic_optimizer()
        if self.base_regularization_coef > 0:
            self.reference_policy = self._frozen_actor_copy()

    def _frozen_actor_copy(self) -> FlowPolicy:
        data = self.policy._get_constructor_parameters()
        data.pop("value_net_arch", None)
        reference = FlowPolicy(**data).to(self.device)
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
