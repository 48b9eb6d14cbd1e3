"""FlowActorCriticPolicy: a FlowPolicy plus a value network, for the on-policy algorithms (FlowPPO, ReinFlow)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN, create_mlp
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_flow.policies.flow_policy import FlowPolicy


class FlowActorCriticPolicy(FlowPolicy):
    """
    Flow actor and value critic on one shared features extractor.

    ``forward`` (what SB3's ``collect_rollouts`` calls) returns the *pre-clip* normalized action, so that the rollout
    buffer keeps the action the flow generated; :meth:`unscale_action` clips it to [-1, 1] before mapping it to the
    environment's box, so the environment always gets a valid action.

    :param value_net_arch: hidden sizes of the value network
    :param use_sde: passed by SB3's on-policy algorithms; must be False
    :param args: see :class:`FlowPolicy`
    :param kwargs: see :class:`FlowPolicy`
    """

    # Networks a pretrained FlowPolicy does not have: their weights stay freshly initialized on a base-policy hand-off.
    extra_state_prefixes: tuple[str, ...] = ("value_net.",)

    def __init__(self, *args: Any, value_net_arch: list[int] | None = None, use_sde: bool = False, **kwargs: Any):
        if use_sde:
            raise ValueError("gSDE (use_sde=True) does not apply to flow policies: exploration comes from the flow's noise")
        self.value_net_arch = [256, 256] if value_net_arch is None else list(value_net_arch)
        # Std of the Gaussian perturbation added to rollout actions (FPO++ entropy surrogate); set by the algorithm.
        self.action_perturbation_std = 0.0
        super().__init__(*args, **kwargs)

    def _build_extra_networks(self) -> None:
        features_dim = self.features_extractor.features_dim
        self.value_net = nn.Sequential(*create_mlp(features_dim, 1, self.value_net_arch, self.activation_fn))

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["value_net_arch"] = self.value_net_arch
        return data

    def actor_parameters(self) -> list[nn.Parameter]:
        """Parameters of the flow actor (features extractor and velocity network)."""
        return [*self.features_extractor.parameters(), *self.velocity_net.parameters()]

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        Rollout step: pre-clip normalized actions (in the action space's shape), values, and zeros in place of
        log-probabilities (a flow has none).
        """
        with self.inference_kernels(obs):
            features = self.extract_features(obs, self.features_extractor)
            flow = self.integrate_field(self.velocity_field_from_features(features), deterministic=deterministic)
        actions = flow.actions
        if self.action_perturbation_std > 0 and not deterministic:
            actions = actions + self.action_perturbation_std * th.randn_like(actions)
        values = self.value_net(features)
        return self.env_shaped(actions), values, th.zeros(actions.shape[0], device=actions.device)

    def env_shaped(self, actions: th.Tensor) -> th.Tensor:
        """
        Flat (batch, action_dim) actions in the action space's shape, as SB3's ``collect_rollouts`` hands them to
        ``unscale_action`` and the environment (the rollout buffer flattens them again).
        """
        return actions.reshape((-1, *self.action_space.shape))

    def predict_values(self, obs: PyTorchObs) -> th.Tensor:
        """State values, shape (batch, 1)."""
        return self.value_net(self.extract_features(obs, self.features_extractor))

    def unscale_action(self, scaled_action: np.ndarray) -> np.ndarray:
        """Clip to [-1, 1], then map to the action space's box."""
        return super().unscale_action(np.clip(scaled_action, -1.0, 1.0))


class CnnFlowActorCriticPolicy(FlowActorCriticPolicy):
    """FlowActorCriticPolicy with SB3's NatureCNN features extractor."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class MultiInputFlowActorCriticPolicy(FlowActorCriticPolicy):
    """FlowActorCriticPolicy with SB3's CombinedExtractor, for Dict observations."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)
