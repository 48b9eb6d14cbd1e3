"""A flow policy with a return-prediction head: critic-gradient guidance from demonstrations alone (no TD learning)."""

from __future__ import annotations

from typing import Any

import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs

from sb3_flow.common.critics import mlp
from sb3_flow.policies.critic_samplers import GuidanceScaleKnob, guided_sample
from sb3_flow.policies.flow_policy import FlowPolicy


class ReturnHeadFlowPolicy(GuidanceScaleKnob, FlowPolicy):
    """
    A :class:`FlowPolicy` with a head ``G(s, a)`` on the same features, regressed on the data's discounted
    Monte-Carlo returns while the flow is behaviour-cloned (``FlowBC`` trains both). The head is a critic of the data's
    behaviour policy, learned without TD bootstrapping; ``predict`` samples the flow guided up its gradient,
    ``v' = v + guidance_scale * grad_a G(s, x_t + (1 - t) v)``
    (:func:`~sb3_flow.common.guidance.critic_gradient_guidance`). ``guidance_scale`` is a test-time knob, saved with the
    policy; at 0 (the default) the policy is the plain flow.

    :param guidance_scale: lambda, finite
    :param return_net_arch: hidden sizes of the head (default: the velocity network's)
    :param args: see :class:`FlowPolicy`
    :param kwargs: see :class:`FlowPolicy`
    """

    def __init__(self, *args: Any, guidance_scale: float = 0.0, return_net_arch: list[int] | None = None, **kwargs: Any):
        self.guidance_scale = guidance_scale
        self.return_net_arch = None if return_net_arch is None else list(return_net_arch)
        super().__init__(*args, **kwargs)

    def _build_extra_networks(self) -> None:
        net_arch = self.net_arch if self.return_net_arch is None else self.return_net_arch
        self.return_head = mlp(self.features_extractor.features_dim + self.action_dim, 1, net_arch, self.activation_fn, True)
        # The head regresses standardized returns (a loss of order 1 beside the CFM loss, whatever the reward scale);
        # the statistics of the training data are kept here, saved with the weights, to give G in return units.
        self.register_buffer("return_mean", th.zeros(()))
        self.register_buffer("return_std", th.ones(()))

    def set_return_statistics(self, returns: th.Tensor) -> None:
        """
        Standardize the head's targets with the mean and std of ``returns`` (the training data's returns-to-go).

        :param returns: the Monte-Carlo returns the head is trained on
        """
        self.return_mean.fill_(returns.mean().item())
        self.return_std.fill_(max(returns.std().item(), 1e-6) if returns.numel() > 1 else 1.0)

    def return_head_loss(self, features: th.Tensor, actions: th.Tensor, returns: th.Tensor) -> th.Tensor:
        """
        Mean squared error of the head on standardized returns.

        :param features: observation features
        :param actions: normalized actions
        :param returns: Monte-Carlo returns, in return units
        """
        standardized = self.return_head(th.cat([features, actions.reshape(len(actions), -1)], dim=-1)).squeeze(-1)
        return (standardized - (returns - self.return_mean) / self.return_std).pow(2).mean()

    def test_time_knobs(self) -> dict[str, Any]:
        return {**super().test_time_knobs(), "guidance_scale": self.guidance_scale}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(return_net_arch=self.return_net_arch, **self.test_time_knobs())
        return data

    def predicted_returns_from_features(self, features: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """
        G(s, a) in return units, shape (batch,).

        :param features: observation features
        :param actions: normalized actions
        """
        standardized = self.return_head(th.cat([features, actions.reshape(len(actions), -1)], dim=-1)).squeeze(-1)
        return standardized * self.return_std + self.return_mean

    def q_values(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """
        The head as a one-network critic: G(s, a), shape (1, batch) (so samplers take it as any Q ensemble).

        :param obs: observations (tensors)
        :param actions: normalized actions
        """
        return self.predicted_returns_from_features(self.extract_features(obs, self.features_extractor), actions)[None]

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        if self.guidance_scale == 0.0:
            return super()._predict(observation, deterministic)
        return guided_sample(self, self.score, observation, self.guidance_scale, deterministic)

    def score(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """
        G(s, a), shape (batch,): what the guidance climbs.

        :param obs: observations (tensors)
        :param actions: normalized actions
        """
        return self.q_values(obs, actions)[0]


class CnnReturnHeadFlowPolicy(ReturnHeadFlowPolicy):
    """ReturnHeadFlowPolicy with SB3's NatureCNN features extractor."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class MultiInputReturnHeadFlowPolicy(ReturnHeadFlowPolicy):
    """ReturnHeadFlowPolicy with SB3's CombinedExtractor, for Dict observations."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)
