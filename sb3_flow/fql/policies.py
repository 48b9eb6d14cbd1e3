"""FQL's policy: the BC flow and critics of :class:`~sb3_flow.policies.flow_q.FlowQPolicy`, plus a one-step policy."""

from __future__ import annotations

from typing import Any

import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule

from sb3_flow.common.critics import mlp
from sb3_flow.common.observations import first_entry
from sb3_flow.policies.flow_q import FlowQPolicy


class FQLPolicy(FlowQPolicy):
    """
    FQL's networks (Park et al., 2025): the BC flow, the Q ensemble and a one-step policy ``mu(s, z)`` that maps
    noise ``z`` to an action in one forward pass (the "one-step flow"). ``predict`` runs ``mu`` once: ``z = 0`` when
    deterministic, ``z ~ N(0, I)`` otherwise; no integration at inference. The flow stays available as ``bc_policy``.

    The parameters are those of :class:`~sb3_flow.policies.flow_q.FlowQPolicy`; ``net_arch`` sizes both the flow's
    velocity network and the one-step policy, as in FQL.
    """

    def _build_actor(self, lr_schedule: Schedule) -> None:
        self.actor_features_extractor = self.make_features_extractor()
        features_dim = self.actor_features_extractor.features_dim
        self.actor = mlp(features_dim + self.action_dim, self.action_dim, self.net_arch, self.activation_fn, False)
        actor_parameters = [*self.actor_features_extractor.parameters(), *self.actor.parameters()]
        self.actor_optimizer = self.optimizer_class(actor_parameters, lr=lr_schedule(1), **self.optimizer_kwargs)

    def optimizers(self) -> list[th.optim.Optimizer]:
        return [*super().optimizers(), self.actor_optimizer]

    def one_step_actions(self, obs: PyTorchObs, noise: th.Tensor) -> th.Tensor:
        """
        ``mu(s, z)`` before clipping.

        :param obs: observations (tensors)
        :param noise: z, shape (batch, action_dim)
        :return: shape (batch, action_dim)
        """
        features = self.extract_features(obs, self.actor_features_extractor)
        return self.actor(th.cat([features, noise], dim=-1))

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        shape = (first_entry(observation).shape[0], self.action_dim)
        device = self.bc_policy.device
        noise = th.zeros(shape, device=device) if deterministic else th.randn(shape, device=device)
        # One-row calls take torch's native kernels (oneDNN's fixed cost dominates GELU at a few rows).
        with self.bc_policy.inference_kernels(observation):
            return self.one_step_actions(observation, noise).clamp(-1.0, 1.0)


class CnnFQLPolicy(FQLPolicy):
    """FQLPolicy with SB3's NatureCNN features extractors."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class MultiInputFQLPolicy(FQLPolicy):
    """FQLPolicy with SB3's CombinedExtractor, for Dict observations."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


MlpPolicy = FQLPolicy
CnnPolicy = CnnFQLPolicy
MultiInputPolicy = MultiInputFQLPolicy
