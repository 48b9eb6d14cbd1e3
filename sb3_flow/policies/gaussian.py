"""A unimodal Gaussian policy for the behaviour-cloning baseline: what a flow policy is compared against."""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
    create_mlp,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from sb3_flow.policies.base import BoxActionPolicy


class GaussianPolicy(BoxActionPolicy):
    """
    Diagonal Gaussian over normalized actions, mean from an MLP, state-independent log-std; trained by maximum
    likelihood it regresses to the mean of the demonstrated actions (a multimodal dataset collapses between modes).

    :param observation_space: observation space
    :param action_space: a Box action space with finite bounds
    :param lr_schedule: learning-rate schedule
    :param net_arch: hidden layer sizes
    :param activation_fn: activation class
    :param log_std_init: initial log standard deviation
    :param features_extractor_class: SB3 features extractor class
    :param features_extractor_kwargs: its keyword arguments
    :param normalize_images: divide image observations by 255
    :param optimizer_class: optimizer class
    :param optimizer_kwargs: optimizer keyword arguments
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.GELU,
        log_std_init: float = -1.0,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__(
            observation_space,
            action_space,
            net_arch,
            activation_fn,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )
        self.log_std_init = log_std_init
        self.features_extractor = self.make_features_extractor()
        self.mean_net = nn.Sequential(
            *create_mlp(self.features_extractor.features_dim, self.action_dim, self.net_arch, activation_fn)
        )
        self.log_std = nn.Parameter(th.full((self.action_dim,), float(log_std_init)))
        self.distribution = DiagGaussianDistribution(self.action_dim)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(log_std_init=self.log_std_init)
        return data

    def action_distribution(self, obs: PyTorchObs) -> DiagGaussianDistribution:
        """The Gaussian over normalized actions for a batch of observations."""
        mean = self.mean_net(self.extract_features(obs, self.features_extractor))
        return self.distribution.proba_distribution(mean, self.log_std)

    def log_prob(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """Log-likelihood of normalized actions, shape (batch,)."""
        return self.action_distribution(obs).log_prob(actions.reshape(actions.shape[0], -1))

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self.action_distribution(observation).get_actions(deterministic=deterministic).clamp(-1.0, 1.0)


class CnnGaussianPolicy(GaussianPolicy):
    """GaussianPolicy with SB3's NatureCNN features extractor."""

    def __init__(self, *args, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class MultiInputGaussianPolicy(GaussianPolicy):
    """GaussianPolicy with SB3's CombinedExtractor, for Dict observations."""

    def __init__(self, *args, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)
