"""FlowQPolicy: a behaviour-cloned flow policy with a Q ensemble and its target, the policy of the critic-based methods."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any, ClassVar

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from sb3_flow.common.critics import Q_AGGREGATIONS, QEnsemble, aggregate_q, mlp
from sb3_flow.common.utils import check_positive_int
from sb3_flow.policies.base import BoxActionPolicy
from sb3_flow.policies.critic_samplers import BestOfNKnobs, best_of_n_actions
from sb3_flow.policies.flow_policy import FlowPolicy

# FQL's networks (Park et al., 2025): 4 x 512 MLPs for the flow, the one-step actor and the critics.
FQL_NET_ARCH = (512, 512, 512, 512)


class FlowQPolicy(BoxActionPolicy):
    """
    A flow policy trained by behaviour cloning (``bc_policy``, a :class:`FlowPolicy`) beside a Q ensemble
    (``critic``, with a Polyak-averaged copy ``critic_target``) on its own features extractor. ``predict`` integrates
    the flow; subclasses (FQL's one-step policy) act differently.

    :param observation_space: observation space
    :param action_space: a Box action space with finite bounds
    :param lr_schedule: learning-rate schedule
    :param net_arch: hidden sizes of the flow's velocity network (FQL: 4 x 512)
    :param critic_net_arch: hidden sizes of each Q network (FQL: 4 x 512)
    :param activation_fn: activation class (FQL: GELU)
    :param n_critics: Q networks in the ensemble (FQL: 2)
    :param critic_layer_norm: layer normalization in the Q networks (FQL: on)
    :param n_flow_steps: Euler steps K of the flow (FQL: 10)
    :param time_embedding_dim: size of the flow's time embedding
    :param features_extractor_class: SB3 features extractor class (each network gets its own, as in FQL)
    :param features_extractor_kwargs: its keyword arguments
    :param normalize_images: divide image observations by 255
    :param optimizer_class: optimizer class
    :param optimizer_kwargs: optimizer keyword arguments, besides the learning rate
    """

    # The class of ``bc_policy``.
    flow_policy_class: ClassVar[type[FlowPolicy]] = FlowPolicy

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | None = None,
        critic_net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.GELU,
        n_critics: int = 2,
        critic_layer_norm: bool = True,
        n_flow_steps: int = 10,
        time_embedding_dim: int = 17,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__(
            observation_space,
            action_space,
            list(FQL_NET_ARCH) if net_arch is None else net_arch,
            activation_fn,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )
        self.critic_net_arch = list(FQL_NET_ARCH) if critic_net_arch is None else list(critic_net_arch)
        self.n_critics = check_positive_int(n_critics, "n_critics")
        self.critic_layer_norm = critic_layer_norm
        self.n_flow_steps = n_flow_steps
        self.time_embedding_dim = time_embedding_dim
        self._build(lr_schedule)

    def _build(self, lr_schedule: Schedule) -> None:
        self.bc_policy = self.flow_policy_class(
            self.observation_space,
            self.action_space,
            lr_schedule,
            net_arch=self.net_arch,
            activation_fn=self.activation_fn,
            time_embedding_dim=self.time_embedding_dim,
            n_flow_steps=self.n_flow_steps,
            features_extractor_class=self.features_extractor_class,
            features_extractor_kwargs=self.features_extractor_kwargs,
            normalize_images=self.normalize_images,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
            **self._flow_policy_kwargs(),
        )
        critic_features = self.make_features_extractor()
        self.critic = nn.ModuleDict(
            {
                "features_extractor": critic_features,
                "q_networks": QEnsemble(
                    critic_features.features_dim,
                    self.action_dim,
                    self.n_critics,
                    self.critic_net_arch,
                    self.activation_fn,
                    self.critic_layer_norm,
                ),
            }
        )
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.critic_optimizer = self.optimizer_class(self.critic.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)
        self._build_actor(lr_schedule)

    def _build_actor(self, lr_schedule: Schedule) -> None:
        """Subclasses add the networks they act with (the flow itself acts here)."""

    def _flow_policy_kwargs(self) -> dict[str, Any]:
        """Arguments of ``flow_policy_class`` besides the shared ones (a conditional flow's guidance weight)."""
        return {}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            critic_net_arch=self.critic_net_arch,
            n_critics=self.n_critics,
            critic_layer_norm=self.critic_layer_norm,
            n_flow_steps=self.n_flow_steps,
            time_embedding_dim=self.time_embedding_dim,
        )
        return data

    def optimizers(self) -> list[th.optim.Optimizer]:
        """Every optimizer of the policy (the algorithm updates their learning rates)."""
        return [self.bc_policy.optimizer, self.critic_optimizer]

    def q_values(self, obs: PyTorchObs, actions: th.Tensor, target: bool = False) -> th.Tensor:
        """
        :param obs: observations (tensors)
        :param actions: normalized actions, shape (batch, action_dim)
        :param target: use the target networks
        :return: shape (n_critics, batch)
        """
        critic = self.critic_target if target else self.critic
        return critic["q_networks"](self.extract_features(obs, critic["features_extractor"]), actions)

    @contextlib.contextmanager
    def critic_frozen(self) -> Iterator[None]:
        """
        The critic's parameters do not require gradients inside the block: a policy loss backpropagates through Q to
        the actions without computing (and then discarding) gradients for the critic's weights.
        """
        parameters = [parameter for parameter in self.critic.parameters() if parameter.requires_grad]
        for parameter in parameters:
            parameter.requires_grad_(False)
        try:
            yield
        finally:
            for parameter in parameters:
                parameter.requires_grad_(True)

    def flow_actions(self, obs: PyTorchObs, noise: th.Tensor) -> th.Tensor:
        """The BC flow's K-step Euler integral from ``noise``, clipped to [-1, 1] (differentiable)."""
        return self.bc_policy.sample(obs, noise=noise)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        with self.bc_policy.inference_kernels(observation):
            return self.bc_policy.sample(observation, deterministic=deterministic)


class CnnFlowQPolicy(FlowQPolicy):
    """FlowQPolicy with SB3's NatureCNN features extractors."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class MultiInputFlowQPolicy(FlowQPolicy):
    """FlowQPolicy with SB3's CombinedExtractor, for Dict observations."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class InSampleFlowQPolicy(BestOfNKnobs, FlowQPolicy):
    """
    A :class:`FlowQPolicy` with IQL's in-sample critics: the Q ensemble plus a state-value network ``V(s)``
    (``value``), both trained only on the data's actions (Kostrikov et al., 2022). It acts by best-of-N: N actions
    from the BC flow, the one with the highest Q (``"argmax"``) or one drawn by ``softmax(Q / temperature)``; with
    ``n_samples = 1`` it samples the flow. ``n_samples``, ``selection`` and ``temperature`` are test-time knobs, saved
    with the policy.

    :param n_samples: N (IFQL: 32)
    :param selection: "argmax" or "softmax"
    :param temperature: softmax temperature
    :param q_agg: "mean" or "min" over the critics when scoring (IFQL: min)
    :param args: see :class:`FlowQPolicy`
    :param kwargs: see :class:`FlowQPolicy`
    """

    def __init__(
        self,
        *args: Any,
        n_samples: int = 32,
        selection: str = "argmax",
        temperature: float = 1.0,
        q_agg: str = "min",
        **kwargs: Any,
    ):
        self.n_samples, self.selection, self.temperature = n_samples, selection, temperature
        self.q_agg = q_agg
        super().__init__(*args, **kwargs)

    @property
    def q_agg(self) -> str:
        """ "mean" or "min" over the critics where actions are scored (fixed by the algorithm: its ``q_agg``)."""
        return self._q_agg

    @q_agg.setter
    def q_agg(self, value: str) -> None:
        if value not in Q_AGGREGATIONS:
            raise ValueError(f"q_agg must be one of {Q_AGGREGATIONS}, got {value!r}")
        self._q_agg = value

    def _build_actor(self, lr_schedule: Schedule) -> None:
        value_features = self.make_features_extractor()
        self.value = nn.ModuleDict(
            {
                "features_extractor": value_features,
                "value_network": mlp(
                    value_features.features_dim, 1, self.critic_net_arch, self.activation_fn, self.critic_layer_norm
                ),
            }
        )
        self.value_optimizer = self.optimizer_class(self.value.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def test_time_knobs(self) -> dict[str, Any]:
        return {**super().test_time_knobs(), **self.best_of_n_knobs()}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(q_agg=self.q_agg, **self.test_time_knobs())
        return data

    def optimizers(self) -> list[th.optim.Optimizer]:
        return [*super().optimizers(), self.value_optimizer]

    def values(self, obs: PyTorchObs) -> th.Tensor:
        """V(s), shape (batch,)."""
        return self.value["value_network"](self.extract_features(obs, self.value["features_extractor"])).squeeze(-1)

    def score(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """Q of normalized actions aggregated over the critics with ``q_agg``, shape (batch,)."""
        return aggregate_q(self.q_values(obs, actions), self.q_agg)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        with self.bc_policy.inference_kernels(observation):
            if self.n_samples == 1:
                return self.bc_policy.sample(observation, deterministic=deterministic)
            return best_of_n_actions(
                self.bc_policy, self.score, observation, self.n_samples, self.selection, self.temperature, deterministic
            )


class CnnInSampleFlowQPolicy(InSampleFlowQPolicy):
    """InSampleFlowQPolicy with SB3's NatureCNN features extractors."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class MultiInputInSampleFlowQPolicy(InSampleFlowQPolicy):
    """InSampleFlowQPolicy with SB3's CombinedExtractor, for Dict observations."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)
