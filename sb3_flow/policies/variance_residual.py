"""
Variance residual: SB3 agent policies that learn a **state-dependent exploration scale** around a frozen base
flow policy's action, and optionally a mean correction, trained by SB3's PPO / A2C or SAC on a
:class:`~sb3_flow.wrappers.ResidualActionWrapper` (``env action = clip(base action + residual_scale * r)``).

The reference text's residual idea: "use the residual to inject exploration capabilities, effectively altering the
variance instead of the mean (ReinFlow with learnable noise is one example)". ReinFlow learns noise inside the flow's
integration and needs its own chain likelihood; here the noise is a Gaussian in action space around the base's
deterministic action, so any SB3 algorithm trains it with its exact log-probability, its buffers, callbacks and Zoo
entries unchanged. The agent's distribution over the residual ``r`` is ``N(mu(s), sigma(s)^2)`` (PPO) or
``tanh(N(mu(s), sigma(s)^2))`` (SAC) with

- ``mu(s) = 0`` by default (``learn_mean=False``): the agent can only widen or narrow the exploration around the
  base, state by state; its deterministic action is the base's, always. With ``learn_mean=True`` the mean head
  starts at zero and learns a correction (at most ``residual_scale`` in normalized action units, like the mean
  residual), while the std head keeps its own state-dependent scale.
- ``log sigma(s)`` a linear head on the actor's latent, zero weights and bias ``log_std_init`` at the start: every
  state starts with the same std ``exp(log_std_init)`` (in units of ``residual_scale``), exactly the distribution
  the docs claim, and the base's action as its mean and deterministic action.

Policy Decorator (Yuan et al., 2024, https://arxiv.org/abs/2412.13630) and ResiP (Ankile et al., 2024,
https://arxiv.org/abs/2407.16677) learn the mean residual; ReinFlow (Zhang et al., 2025,
https://arxiv.org/abs/2505.22094) the noise inside the flow.
"""

from __future__ import annotations

from typing import Any

import torch as th
from stable_baselines3.common.distributions import DiagGaussianDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, MultiInputActorCriticPolicy
from stable_baselines3.sac.policies import Actor, MultiInputPolicy, SACPolicy
from torch import nn

from sb3_flow.common.utils import check_finite_number

# SAC's actor clamps its log-std to these bounds; the PPO head uses the same, so that a diverging head cannot reach
# an infinite or zero std (a NaN log-probability).
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
DEFAULT_LOG_STD_INIT = -1.0  # std 0.37 of residual_scale: the agent's residual rarely reaches its [-1, 1] clip


def start_at_base(mean_head: nn.Linear, log_std_head: nn.Linear, log_std_init: float, learn_mean: bool) -> None:
    """
    Initialize the heads so that every state starts at the base's action with std ``exp(log_std_init)``: the mean
    head all zeros (frozen unless ``learn_mean``), the log-std head zero weights and bias ``log_std_init``.

    :param mean_head: the linear layer giving the residual's mean
    :param log_std_head: the linear layer giving its log-std
    :param log_std_init: the initial log-std, the same in every state
    :param learn_mean: whether the mean head trains
    """
    with th.no_grad():
        mean_head.weight.zero_()
        mean_head.bias.zero_()
        log_std_head.weight.zero_()
        log_std_head.bias.fill_(log_std_init)
    mean_head.requires_grad_(learn_mean)


def _checked_log_std_init(log_std_init: float) -> float:
    log_std_init = check_finite_number(log_std_init, "log_std_init")
    if not LOG_STD_MIN <= log_std_init <= LOG_STD_MAX:
        raise ValueError(f"log_std_init must lie in [{LOG_STD_MIN}, {LOG_STD_MAX}], got {log_std_init}")
    return log_std_init


class VarianceResidualPolicy(ActorCriticPolicy):
    """
    PPO / A2C policy of a variance residual: a Gaussian residual whose mean is zero (or a learned correction,
    ``learn_mean=True``) and whose std is a learned function of the state. Use it on a
    :class:`~sb3_flow.wrappers.ResidualActionWrapper` (whose ``residual_scale`` is then the exploration's unit):
    ``PPO(VarianceResidualPolicy, ResidualActionWrapper(env, base, residual_scale=0.5))``. Other parameters as
    SB3's ``ActorCriticPolicy`` (``use_sde`` is not supported: the std is already state-dependent).

    :param learn_mean: learn a mean correction too (its head starts at zero)
    :param log_std_init: the log-std of every state at the start (residual units)
    """

    def __init__(self, *args: Any, learn_mean: bool = False, log_std_init: float = DEFAULT_LOG_STD_INIT, **kwargs: Any):
        if kwargs.get("use_sde"):
            raise ValueError("VarianceResidualPolicy learns a state-dependent std itself: use_sde must be False")
        self.learn_mean = bool(learn_mean)
        super().__init__(*args, log_std_init=_checked_log_std_init(log_std_init), **kwargs)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        if not isinstance(self.action_dist, DiagGaussianDistribution):
            raise ValueError(f"VarianceResidualPolicy needs a Box action space, got {self.action_space}")
        # SB3's state-independent log-std parameter is replaced by a head on the actor's latent.
        del self.log_std
        self.log_std_net = nn.Linear(self.mlp_extractor.latent_dim_pi, self.action_dist.action_dim)
        start_at_base(self.action_net, self.log_std_net, self.log_std_init, self.learn_mean)
        # The optimizer was built before the new head existed.
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> Distribution:
        log_std = self.log_std_net(latent_pi).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return self.action_dist.proba_distribution(self.action_net(latent_pi), log_std)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "learn_mean": self.learn_mean}


class MultiInputVarianceResidualPolicy(VarianceResidualPolicy, MultiInputActorCriticPolicy):
    """:class:`VarianceResidualPolicy` for Dict observations (e.g. the residual wrapper's ``append_base_action``)."""


class _VarianceResidualSACMixin:
    """SAC's actor with the variance-residual heads (SAC's actor already has a state-dependent log-std head)."""

    actor_kwargs: dict[str, Any]
    learn_mean: bool

    def _init_variance_residual(self, kwargs: dict[str, Any], learn_mean: bool, log_std_init: float) -> dict[str, Any]:
        if kwargs.get("use_sde"):
            raise ValueError("VarianceResidualSACPolicy learns a state-dependent std itself: use_sde must be False")
        self.learn_mean = bool(learn_mean)
        # SAC's own log_std_init is read only with gSDE; here it is the initial log-std of the log-std head.
        return {**kwargs, "log_std_init": _checked_log_std_init(log_std_init)}

    def make_actor(self, features_extractor: Any = None) -> Actor:
        actor = super().make_actor(features_extractor)  # type: ignore[misc]
        start_at_base(actor.mu, actor.log_std, self.actor_kwargs["log_std_init"], self.learn_mean)
        return actor

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "learn_mean": self.learn_mean}  # type: ignore[misc]


class VarianceResidualSACPolicy(_VarianceResidualSACMixin, SACPolicy):
    """
    SAC policy of a variance residual: ``r = tanh(u)``, ``u ~ N(mu(s), sigma(s)^2)`` with ``mu = 0`` (or a learned
    correction, ``learn_mean=True``); the deterministic action is the base's. Use it on a
    :class:`~sb3_flow.wrappers.ResidualActionWrapper`: ``SAC(VarianceResidualSACPolicy, ResidualActionWrapper(...))``.
    SAC's entropy term then keeps the exploration from collapsing where the critic sees no gain in narrowing it.
    Other parameters as SB3's ``SACPolicy`` (``use_sde`` is not supported).

    :param learn_mean: learn a mean correction too (its head starts at zero)
    :param log_std_init: the log-std of every state at the start (of ``u``, before the tanh)
    """

    def __init__(self, *args: Any, learn_mean: bool = False, log_std_init: float = DEFAULT_LOG_STD_INIT, **kwargs: Any):
        super().__init__(*args, **self._init_variance_residual(kwargs, learn_mean, log_std_init))


class MultiInputVarianceResidualSACPolicy(_VarianceResidualSACMixin, MultiInputPolicy):
    """:class:`VarianceResidualSACPolicy` for Dict observations."""

    def __init__(self, *args: Any, learn_mean: bool = False, log_std_init: float = DEFAULT_LOG_STD_INIT, **kwargs: Any):
        super().__init__(*args, **self._init_variance_residual(kwargs, learn_mean, log_std_init))
